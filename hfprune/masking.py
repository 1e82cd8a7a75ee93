"""Reversible masks: gates on any unit kind, applied through hooks (no weight changes); `.remove()` undoes them.

Each unit kind (`hfprune.units`) puts its gate where a masked unit contributes exactly what a removed one does:
heads at the input of the attention output projection (the concatenated per-head context), FFN neurons at the input
of the down projection, layers by blending the block's output with its input (gate 0: the residual stream passes
through unchanged), CNN channels at the input of every layer that consumes the group. The same gates, with
`requires_grad=True`, are what the importance scorers differentiate.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .arch import get_adapter, unwrap_model
from .checks import expect_model
from .compensation import resolve_compensation
from .plan import PruningPlan, expect_plan
from .transaction import transaction
from .units import Gates, attach
from .weight_masks import check_no_weight_masks

__all__ = ["Gates", "attach_gates", "mask", "masked"]


def attach_gates(model: nn.Module, heads=False, neurons=False, layers=False, requires_grad: bool = False,
                 plan: PruningPlan | None = None, **units) -> Gates:
    """Attach gates (all ones, or zero where `plan` removes a unit) to the chosen unit kinds of a model.

    Args:
        model (`PreTrainedModel`): a model of a supported family; a DDP / accelerate / compiled wrapper is unwrapped
            (the hooks go on the inner model's modules, so they also act when the wrapper runs the forward).
        heads, neurons, layers (`bool` or `Iterable[int]`): which transformer unit kinds get gates (`True`: every
            layer; or the layers to gate).
        requires_grad (`bool`): make the gates leaf tensors that collect gradients (for importance scoring).
        plan (`PruningPlan`, *optional*): units whose gate starts at 0 (validated first).
        units: any other registered unit kind, the same way: `channels=True` (the plan's groups, or every prunable
            group without a plan) or `channels=[group names]`.

    Returns:
        `Gates`: the handle; call `.remove()` to detach.

    Example:
        ```python
        >>> with hfprune.attach_gates(model, heads=True, requires_grad=True) as gates:
        ...     model(**batch).loss.backward()
        ...     grads = {layer: g.grad for layer, g in gates.head_gates.items()}
        ```
    """
    expect_model("hfprune.attach_gates", model)
    if plan is not None:
        expect_plan("hfprune.attach_gates", plan)
    model = unwrap_model(model)
    if plan is not None:
        plan.validate(model)
    return attach(model, get_adapter(model), {"heads": heads, "neurons": neurons, "layers": layers, **units}, plan,
                  requires_grad)


def mask(model: nn.Module, plan: PruningPlan, compensate=None) -> Gates:
    """Zero the contributions of the plan's units through hooks; returns a handle whose `.remove()` undoes it.

    `compensate`: calibration batches or a `hfprune.measure_compensation`; the removed units' mean contribution
    (CNN channels, a transformer's heads / FFN neurons / hidden channels) is folded into each consumer's bias /
    BatchNorm running mean, exactly as
    `hfprune.prune(model, plan, compensate=...)` does, and `.remove()` restores the original tensors.

    Example:
        ```python
        >>> handle = hfprune.mask(model, plan)
        >>> logits = model(**batch).logits   # as if the units were removed
        >>> handle.remove()                  # the model is exactly as before
        ```
    """
    expect_model("hfprune.mask", model)
    expect_plan("hfprune.mask", plan)
    model = unwrap_model(model)
    check_no_weight_masks(model, "hfprune.mask")
    plan.validate(model)
    compensation = resolve_compensation(model, plan, compensate)  # measured before any gate is attached
    with transaction(model) as snapshot:  # all or nothing: no hook and no fold stays behind on an error
        gates = attach(model, get_adapter(model), {name: True for name in plan.kinds()}, plan)
        if compensation is not None:
            snapshot.keep(*compensation.tensors(model))
            gates.hold(compensation.fold(model))  # after the hooks: remove() restores the offsets
    return gates


@contextmanager
def masked(model: nn.Module, plan: PruningPlan, compensate=None):
    """Context manager form of `mask`: inside the block the model behaves as if `plan` had been applied.

    Example:
        ```python
        >>> with hfprune.masked(model, hfprune.PruningPlan(heads={0: [1]})):
        ...     masked_logits = model(**batch).logits
        ```
    """
    expect_model("hfprune.masked", model)
    expect_plan("hfprune.masked", plan)
    handle = mask(model, plan, compensate=compensate)
    try:
        yield handle
    finally:
        handle.remove()
