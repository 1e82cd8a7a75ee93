"""Physical removal of a plan's units: weights and `model.config` change together, all or nothing.

One loop over the unit kinds of the plan (`hfprune.units`): every kind checks first (nothing changes if one refuses),
then each removes its units in its order (layers last), and the record in `config.hfprune` follows.
"""

from __future__ import annotations

from torch import nn

from .arch import check_not_offloaded, get_adapter, unwrap_model
from .checks import expect_model
from .compensation import resolve_compensation
from .plan import PruningPlan, expect_plan
from .structure import sync_config
from .transaction import transaction
from .units import get_kind
from .weight_masks import check_no_weight_masks


def prune(model: nn.Module, plan: PruningPlan, compensate=None) -> nn.Module:
    """Physically remove the units of `plan` (heads, FFN neurons, layers; CNN channels) from `model`, in place.

    Weights and biases of every tensor a unit lives in are sliced (q/k/v/o or fused qkv and FFN projections; a CNN
    channel group's convolutions, BatchNorms and consumers), removed layers are dropped and re-indexed, and
    `model.config` records the new structure (`config.hfprune`; plain keys too where they can say it), so that
    `model.save_pretrained()` followed by `hfprune.load_pruned()` gives the same model back. Calls compose: a second
    plan is indexed against the already-pruned model.

    For grouped-query attention a KV head is removed once every query head of its group is removed.

    Args:
        model (`PreTrainedModel`): a model of a supported family; a DDP / accelerate / compiled wrapper is unwrapped
            (the wrapper holds the old parameters afterwards: wrap the returned model again, e.g.
            `accelerator.prepare(model)`).
        plan (`PruningPlan`): units to remove, indexed as the model is now.
        compensate (`Iterable[dict]` or `Compensation`, *optional*): calibration batches (`input_ids` /
            `pixel_values`) or a measured `hfprune.measure_compensation`; each removed unit's mean contribution
            (CNN channels; a transformer's heads, FFN neurons and hidden channels: FLAP) is folded into its
            consumers' biases / BatchNorm running means (see `docs/channels.md`, `docs/llm_structured.md`).

    Returns:
        The same `model` object (the model inside the wrapper, when given one), pruned.

    All or nothing: everything is checked first, and on any exception (`KeyboardInterrupt` included) the model is
    restored exactly as it was (parameters, buffers, modules, hooks, config and its record) before it is re-raised
    (`hfprune.transaction`).

    Raises:
        TypeError: `model` is not a module or `plan` not a `PruningPlan`.
        ValueError: the plan does not fit the model (another structure, e.g. applied twice), a gate is still
            attached to a unit it resizes, weight masks of `hfprune.sparsify` are active, or the compensation cannot
            be measured or does not fit (nothing is changed then).

    Example:
        ```python
        >>> import hfprune
        >>> hfprune.prune(model, hfprune.PruningPlan(heads={0: [0, 2]}, neurons={1: list(range(32))}, layers=[3]))
        ```
    """
    expect_model("hfprune.prune", model)
    expect_plan("hfprune.prune", plan)
    model = unwrap_model(model)
    check_no_weight_masks(model, "hfprune.prune")
    check_not_offloaded(model, "prune")
    return apply_plan(model, plan, compensate)


def apply_plan(model: nn.Module, plan: PruningPlan, compensate=None) -> nn.Module:
    """`prune` without the in-memory check: also slices meta tensors as shapes only (`hfprune.stream` runs it on a
    meta model with one block made real)."""
    adapter = get_adapter(model)
    plan.validate(model)  # before any change: a bad plan leaves the model untouched
    kinds = sorted((get_kind(name) for name in plan.kinds()), key=lambda kind: kind.order)
    for kind in kinds:
        kind.check_removal(model, adapter, plan)
    compensation = resolve_compensation(model, plan, compensate)  # measured on the model as it is, before slicing
    with transaction(model) as snapshot:
        sync_config(model, adapter)  # make sure a record of the structure *before* this plan exists
        if compensation is not None:
            snapshot.keep(*compensation.tensors(model))  # folded in place
            compensation.fold(model)  # full-size tensors: a target that is also sliced keeps its kept rows' fold
        for kind in kinds:
            kind.remove(model, adapter, plan)
        sync_config(model, adapter, plan=plan)
    return model
