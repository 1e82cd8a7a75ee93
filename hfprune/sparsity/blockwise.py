"""`sparsify` with a block-by-block criterion (`needs="blocks"` in the registry: Wanda, SparseGPT): checks first,
then the criterion's pass.

Everything that can be checked before a weight changes is checked here or by the registry (pattern, scope, shapes,
the criterion's options and their values, targets inside the blocks); the sequence lengths are checked while the
block-0 inputs are captured, which is also before any weight changes. An error later in the pass restores the
weights changed so far (from the copies kept for `remove()`; with `keep_original=False` there are none, and the
model is left partly pruned).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from ..criteria import Criterion, get_criterion
from ..passes import names_per_block
from .config import SparsifyConfig
from .handle import SparsityHandle
from .patterns import check_shapes
from .targets import Target


def check_blockwise(model: nn.Module, targets: list[Target], config: SparsifyConfig, criterion: Criterion,
           dataloader) -> None:
    pattern = config.parsed_pattern
    name = criterion.name
    if pattern.kind == "block":
        raise ValueError(f"criterion={name!r} supports pattern 'unstructured' or 'N:M', not blocks '{pattern}'")
    if config.scope != "layer":
        raise ValueError(f"criterion={name!r} prunes each layer from its own calibration inputs; scope must be "
                         f"'layer', got {config.scope!r}")
    if dataloader is None:
        raise ValueError(f"criterion={name!r} needs calibration data: dataloader=hfprune.calibration_batches(...) "
                         "or any iterable of batch dicts with input_ids")
    check_shapes(targets, pattern)  # N:M with M not dividing an input size
    names_per_block(model, [t.name for t in targets])  # every target inside a block


def sparsify_blockwise(model: nn.Module, targets: list[Target], config: SparsifyConfig, dataloader: Iterable,
                       device: str | torch.device | None = None, keep_original: bool = True,
                       **options) -> SparsityHandle:
    """Run the registered block-by-block criterion `config.criterion` and wrap its masks in a `SparsityHandle`.

    Its options were checked by the registry when `config` was built (`SparsifyConfig` calls `check_call`).
    """
    criterion = get_criterion(config.criterion, "weights", caller="sparsify")
    check_blockwise(model, targets, config, criterion, dataloader)
    if config.max_batches is not None:
        dataloader = list(itertools.islice(iter(dataloader), config.max_batches))
    originals: dict[str, torch.Tensor] | None = {} if keep_original else None
    changed = {t.name: t for t in targets}
    try:
        result = criterion.fn(model, dataloader, targets=targets, sparsity=float(config.sparsity),
                              pattern=config.parsed_pattern, device=device, originals=originals, **options)
    except BaseException:
        with torch.no_grad():  # undo the blocks pruned before the error
            for name, weight in (originals or {}).items():
                changed[name].weight.data.copy_(weight.to(changed[name].weight.device))
        raise
    info = dict(result.info, criterion=config.criterion, pattern=str(config.parsed_pattern))
    if originals is not None:
        info["original_copy_bytes"] = sum(w.numel() * w.element_size() for w in originals.values())
    return SparsityHandle(model, targets, result.masks, config, None, originals=result.originals, info=info)


__all__ = ["check_blockwise", "sparsify_blockwise"]
