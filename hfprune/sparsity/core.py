"""`sparsify`: one-shot weight-level pruning of a model's Linear weights, returning a `SparsityHandle`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from torch import nn

from ..arch import check_not_offloaded, unwrap_model
from ..checks import expect, expect_model
from ..criteria import check_call, criteria, get_criterion
from .blockwise import sparsify_blockwise
from .config import SparsifyConfig
from .handle import SparsityHandle, check_not_masked, compute_masks
from .targets import resolve_targets


def sparsify(model: nn.Module, sparsity: float | None = None, criterion: str = "magnitude",
             pattern: str = "unstructured", scope: str = "layer", targets: str | Sequence[str] | None = None,
             dataloader: Iterable | None = None, max_batches: int | None = None, seed: int = 0,
             device: str | None = None, keep_original: bool = True, **options) -> SparsityHandle:
    """Prune individual weights of the attention and FFN projections (or of modules chosen by name) with masks.

    Implements magnitude pruning (Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
    Networks"), first-order Taylor pruning (Molchanov et al. 2019) and N:M sparsity (Mishra et al. 2021,
    "Accelerating Sparse Deep Neural Networks"). The masks stay applied through training until
    `handle.finalize()` folds them into the weights.

    Args:
        model (`nn.Module`): a model of a family hfprune supports (the default targets come from its adapter).
        sparsity (`float`, *optional*): fraction of targeted weights to zero, in [0, 1); N:M patterns fix it.
        criterion (`str`, defaults to `"magnitude"`): `"magnitude"` |w|, `"taylor"` |w * grad| summed over
            `dataloader` batches (the model's own loss), `"random"`, the block-by-block `"wanda"` (Sun et al.
            2023) and `"sparsegpt"` (Frantar & Alistarh 2023; updates the kept weights), computed block by block
            over `dataloader` (see `docs/llm.md`), or any criterion registered for "weights"
            (`hfprune.criteria.criterion_names("weights")`).
        pattern (`str`, defaults to `"unstructured"`): `"unstructured"`, `"N:M"` such as `"2:4"` (along the input
            dimension), or blocks `"RxC"` such as `"1x4"`, `"4x4"` (rows of the output x columns of the input).
        scope (`str`, defaults to `"layer"`): `"layer"` prunes every tensor to `sparsity`; `"global"` ranks all
            targeted weights together.
        targets (`str` or `list[str]`, *optional*): `None` for every layer's attention and FFN projections, or name
            patterns (glob or regex over full module names); `"default"` may be combined with patterns, e.g.
            `["default", "classifier*"]`. Embeddings and LayerNorms are never targets.
        dataloader (`Iterable[dict]`, *optional*): labelled batches, required by `criterion="taylor"`.
        max_batches (`int`, *optional*): Taylor only: batches to score.
        seed (`int`, defaults to 0): seed of the random criterion.
        device (`str`, *optional*): wanda / sparsegpt: each block moves to this device while it is processed.
        keep_original (`bool`, defaults to `True`): wanda / sparsegpt: keep a CPU copy of the targeted weights, so
            `handle.remove()` restores them (`False` saves that memory).
        options: options of the chosen criterion (the named keyword parameters of its function; sparsegpt:
            `blocksize` (128), `percdamp` (0.01), `true_sequential` (True), `precision` ("float64"); wanda:
            `true_sequential` (False); see `docs/llm.md`), kept in `handle.config.criterion_options` for
            `handle.update`.

    Returns:
        `SparsityHandle`: the masks, already applied.

    Raises:
        ValueError: sparsity outside [0, 1), unknown criterion/pattern/scope, a target pattern matching nothing, or
            a tensor whose shape does not fit the pattern (e.g. N:M with M not dividing its input size), or a
            target already masked by an active handle. Nothing in the model changes in that case.

    Example:
        ```python
        >>> from transformers import AutoModelForSequenceClassification
        >>> import hfprune
        >>> model = AutoModelForSequenceClassification.from_pretrained("../shared/models/minilm-l6-sst2")
        >>> handle = hfprune.sparsify(model, 0.9, targets=["default", "classifier"])
        >>> round(handle.sparsity(), 3)
        0.9
        >>> handle.finalize()                                    # plain zeros; a new sparsify may follow
        >>> handle24 = hfprune.sparsify(model, pattern="2:4")
        ```
    """
    _check_types(model, criterion, pattern, dataloader)
    config = SparsifyConfig(sparsity=sparsity, criterion=criterion, pattern=pattern, scope=scope, targets=targets,
                            max_batches=max_batches, seed=seed, criterion_options=options)
    found = get_criterion(criterion, "weights")
    check_call(found, caller="sparsify", dataloader=dataloader)
    # Under DDP / accelerate the masks and the data criteria's forward passes use the inner model (see
    # `hfprune.importance.api.score_units` for why); the wrapper's forward still goes through the masked weights.
    model = unwrap_model(model)
    check_not_offloaded(model, "sparsify")
    chosen = resolve_targets(model, config.targets)
    check_not_masked(model, chosen)
    if found.sequential:  # block-by-block criteria (needs="blocks": wanda, sparsegpt), in sparsity/blockwise.py
        return sparsify_blockwise(model, chosen, config, dataloader, device=device, keep_original=keep_original,
                                  **options)
    if device is not None or not keep_original:
        raise TypeError("device= and keep_original= apply to the block-by-block criteria "
                        f"{[c.name for c in criteria('weights') if c.sequential]} only")
    masks = compute_masks(model, chosen, config, dataloader)
    return SparsityHandle(model, chosen, masks, config, dataloader)


def _check_types(model, criterion, pattern, dataloader) -> None:
    expect_model("hfprune.sparsify", model)
    expect("hfprune.sparsify", "criterion", criterion, str, "a criterion name (str), e.g. 'magnitude'")
    expect("hfprune.sparsify", "pattern", pattern, str, "a pattern (str): 'unstructured', 'N:M' or 'RxC'")
    if dataloader is not None and (isinstance(dataloader, (str, bytes)) or not isinstance(dataloader, Iterable)):
        expect("hfprune.sparsify", "dataloader", dataloader, (), "a DataLoader or an iterable of batch dicts")
