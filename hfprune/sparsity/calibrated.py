"""`sparsify` with a calibration-based criterion (Wanda, SparseGPT): checks first, then the block-by-block pass.

Everything that can be checked before a weight changes is checked here (pattern, scope, shapes, options, targets
inside the blocks); the sequence lengths are checked while the block-0 inputs are captured, which is also before
any weight changes. An error later in the pass restores the weights changed so far (from the copies kept for
`remove()`; with `keep_original=False` there are none, and the model is left partly pruned).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable

import torch
from torch import nn

from ..criteria import get_criterion
from .config import SparsifyConfig
from .handle import SparsityHandle
from .patterns import check_shapes
from .sequential import block_targets
from .targets import Target

# Options each criterion accepts beyond the common ones (sparsify(..., blocksize=64) for SparseGPT).
_OPTIONS = {"wanda": ("true_sequential",), "sparsegpt": ("blocksize", "percdamp", "true_sequential", "precision")}


def _check(model: nn.Module, targets: list[Target], config: SparsifyConfig, dataloader, options: dict) -> None:
    pattern = config.parsed_pattern
    name = config.criterion
    if pattern.kind == "block":
        raise ValueError(f"criterion={name!r} supports pattern 'unstructured' or 'N:M', not blocks '{pattern}'")
    if config.scope != "layer":
        raise ValueError(f"criterion={name!r} prunes each layer from its own calibration inputs; scope must be "
                         f"'layer', got {config.scope!r}")
    if dataloader is None:
        raise ValueError(f"criterion={name!r} needs calibration data: dataloader=hfprune.calibration_batches(...) "
                         "or any iterable of batch dicts with input_ids")
    unknown = sorted(set(options) - set(_OPTIONS[name]))
    if unknown:
        raise TypeError(f"sparsify(criterion={name!r}) got unknown option(s) {unknown}; it accepts "
                        f"{list(_OPTIONS[name]) or 'none'} beyond the common arguments")
    check_shapes(targets, pattern)  # N:M with M not dividing an input size
    blocksize = options.get("blocksize", 128)
    if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
        raise ValueError(f"blocksize must be a positive integer; got {blocksize!r}")
    if name == "sparsegpt" and pattern.kind == "n:m" and blocksize % pattern.m:
        raise ValueError(f"blocksize={blocksize} must be a multiple of M={pattern.m} for pattern '{pattern}'")
    percdamp = options.get("percdamp", 0.01)
    if not isinstance(percdamp, (int, float)) or not 0 <= percdamp < 1:
        raise ValueError(f"percdamp must be in [0, 1); got {percdamp!r}")
    true_sequential = options.get("true_sequential", True)
    if not isinstance(true_sequential, bool):
        raise ValueError(f"true_sequential must be True or False; got {true_sequential!r}")
    precision = options.get("precision", "float64")
    if precision not in ("float32", "float64"):
        raise ValueError(f"precision must be 'float32' or 'float64'; got {precision!r}")
    block_targets(model, targets)  # every target inside a block


def sparsify_calibrated(model: nn.Module, targets: list[Target], config: SparsifyConfig, dataloader: Iterable,
                        device: str | torch.device | None = None, keep_original: bool = True,
                        **options) -> SparsityHandle:
    """Run the registered calibration criterion `config.criterion` and wrap its masks in a `SparsityHandle`."""
    _check(model, targets, config, dataloader, options)
    criterion = get_criterion(config.criterion, "weights", caller="sparsify")
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


def calibration_option_names(criterion: str) -> tuple[str, ...]:
    """Options `sparsify` passes through to `criterion` (for help texts)."""
    return _OPTIONS.get(criterion, ())


__all__ = ["calibration_option_names", "sparsify_calibrated"]
