"""One forward + backward per batch through gated units: the pass every gradient-based criterion shares.

The gates are exactly those of `hfprune.attach_gates(..., requires_grad=True)` (heads at the output-projection
input, neurons at the down-projection input, layers blending a block's output with its input). Criteria that need
per-example, per-unit terms (Taylor, Fisher) also keep the gated activation `x` and its gradient, through a second
pre-hook that runs after the gate's own; `per_example_stats` is their shared pass. The budget search's mask
gradients (Kwon et al. 2022) are this pass over heads and neurons at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import get_adapter
from ..masking import Gates, attach_gates, mask
from ..plan import PruningPlan
from .batches import check_model, iter_batches, model_loss
from .distributed import sum_per_token
from .modes import eager_attention, scoring_mode

GATED_UNITS = ("heads", "neurons", "layers", "hidden")


@dataclass
class BatchView:
    """What a criterion sees after each backward.

    Attributes:
        gates (`Gates`): the gate handle; `gate.grad` holds this batch's gradient.
        batch (`dict`): the batch, on the model's device.
        outputs: the model outputs (attentions included when requested).
        num_tokens (`int`): this batch's non-padding tokens.
        activations (`dict[int, torch.Tensor]`): layer -> gated unit input `x` (`.grad` filled), when requested.
    """

    gates: Gates
    batch: dict
    outputs: object
    num_tokens: int
    activations: dict[int, torch.Tensor] = field(default_factory=dict)


class TokenCounter:
    """Counts the tokens statistics are divided by: `attention_mask.sum()` when the batch has one, otherwise
    examples x sequence length as seen by the first block's FFN (ViT: patches + CLS)."""

    def __init__(self, model: nn.Module, adapter):
        self._shape_tokens = 0
        first = adapter.layers(model)[0]
        self._handle = adapter.ffn_out(first).register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self._shape_tokens = int(args[0].shape[:-1].numel())

    def count(self, batch: dict) -> int:
        mask = batch.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            return int(mask.sum())
        return self._shape_tokens

    def remove(self) -> None:
        self._handle.remove()


def _keep_activation(store: dict, layer: int):
    def hook(module, args):
        x = args[0]
        if x.requires_grad:
            x.retain_grad()
            store[layer] = x

    return hook


def _check_units(units: tuple[str, ...], keep_activations: bool) -> None:
    if not units or any(u not in GATED_UNITS for u in units):
        raise ValueError(f"units must be among {GATED_UNITS}, got {units!r}")
    if keep_activations and (len(units) != 1 or units[0] in ("layers", "hidden")):
        raise ValueError(f"keep_activations needs one unit kind, 'heads' or 'neurons'; got {units!r}")


def _mask_others(model: nn.Module, plan: PruningPlan | None, units: tuple[str, ...]):
    """Fixed gates for the plan's other unit kinds, so scores are those of the model under the whole plan (e.g.
    neurons scored as if the plan's heads and layers were already removed); `None` when there is nothing else."""
    if plan is None:
        return None
    rest = PruningPlan(heads={} if "heads" in units else plan.heads,
                       neurons={} if "neurons" in units else plan.neurons,
                       layers=[] if "layers" in units else plan.layers,
                       hidden=[] if "hidden" in units else plan.hidden)
    return None if rest.is_empty() else mask(model, rest)


def _activation_hooks(model, adapter, gates: Gates, unit: str, plan: PruningPlan | None, store: dict) -> list:
    blocks = adapter.layers(model)
    owner = gates.head_gates if unit == "heads" else gates.neuron_gates
    handles = []
    for idx, gate in owner.items():
        if gate.numel() == 0 or (plan is not None and idx in plan.layers):
            continue  # no FFN neuron left, or a masked layer (no gradient reaches it): scores stay 0
        module = adapter.out_proj(blocks[idx]) if unit == "heads" else adapter.ffn_out(blocks[idx])
        handles.append(module.register_forward_pre_hook(_keep_activation(store, idx)))
    return handles


def gated_passes(model: nn.Module, dataloader: Iterable, *, units: str | tuple[str, ...],
                 on_batch: Callable[[BatchView], None], plan: PruningPlan | None = None,
                 keep_activations: bool = False, output_attentions: bool = False, max_batches: int | None = None,
                 num_samples: int | None = None, show_progress: bool = True, desc: str = "importance") -> int:
    """Run forward + backward of the model's loss on each batch, calling `on_batch` after each backward.

    Args:
        units (`str` or `tuple[str, ...]`): "heads", "neurons", "layers" and / or "hidden": which gates get
            gradients.
        plan (`PruningPlan`, *optional*): units masked while scoring (their gates are 0).
        keep_activations (`bool`): also keep the gated inputs of the unit's projection and their gradients (one
            unit kind, heads or neurons).

    Returns:
        `int`: the number of tokens seen on this process.
    """
    units = (units,) if isinstance(units, str) else tuple(units)
    _check_units(units, keep_activations)
    device = check_model(model)
    adapter = get_adapter(model)
    total_tokens = 0
    # Gradients are the point here, also when the caller is inside `torch.no_grad()` / `torch.inference_mode()`.
    with torch.inference_mode(False), torch.enable_grad(), scoring_mode(model), eager_attention(model,
                                                                                                  output_attentions):
        gates = attach_gates(model, heads="heads" in units, neurons="neurons" in units, layers="layers" in units,
                             hidden="hidden" in units, requires_grad=True, plan=plan)
        try:
            others = _mask_others(model, plan, units)
        except Exception:
            gates.remove()
            raise
        counter = TokenCounter(model, adapter)
        store: dict[int, torch.Tensor] = {}
        handles = _activation_hooks(model, adapter, gates, units[0], plan, store) if keep_activations else []
        try:
            kwargs = {"output_attentions": True} if output_attentions else {}
            for index, batch in enumerate(iter_batches(dataloader, device, max_batches=max_batches,
                                                       num_samples=num_samples, show_progress=show_progress,
                                                       desc=desc)):
                store.clear()
                gates.zero_grad()
                outputs = model(**batch, **kwargs)
                loss = model_loss(outputs, index)
                if not loss.requires_grad:
                    raise RuntimeError(f"batch {index}: the loss does not depend on the {'/'.join(units)} gates "
                                       "(does the model's forward reach the projections the adapter names?)")
                tokens = counter.count(batch)
                loss.backward()
                on_batch(BatchView(gates, batch, outputs, tokens, dict(store)))
                total_tokens += tokens
        finally:
            store.clear()
            for handle in handles:
                handle.remove()
            counter.remove()
            gates.zero_grad()
            gates.remove()
            if others is not None:
                others.remove()
    return total_tokens


def weight_gradient_passes(model: nn.Module, params: list[nn.Parameter], dataloader: Iterable,
                           on_batch: Callable[[tuple[torch.Tensor, ...]], None], *,
                           max_batches: int | None = None) -> int:
    """Forward + backward of the model's own loss per batch, calling `on_batch(grads)` with dL/dp for each of
    `params` (weight-level Taylor). Eval mode; only `params` require gradients while it runs; `autograd.grad` leaves
    every `.grad` untouched, so scoring cannot disturb a training loop around it.

    Returns:
        `int`: the number of batches seen on this process.
    """
    device = params[0].device
    batches = 0
    with torch.inference_mode(False), torch.enable_grad(), scoring_mode(model):
        for p in params:
            p.requires_grad_(True)
        for index, batch in enumerate(iter_batches(dataloader, device, max_batches=max_batches, show_progress=False,
                                                   need_labels=False)):
            on_batch(torch.autograd.grad(model_loss(model(**batch), index), params))
            batches += 1
    return batches


def per_example_unit_grads(x: torch.Tensor, units: str, head_dim: int) -> torch.Tensor:
    """`[batch, units]`: the gradient of the batch loss w.r.t. each example's share of a unit's gate.

    The gate multiplies the unit's activation `a` (x = g a, g = 1), so dL/dg = sum over tokens of x * dL/dx; summing
    per example rather than over the whole batch gives each example's own term.
    """
    if x.grad is None:
        raise RuntimeError("no gradient reached a gated activation; is the unit used by the loss?")
    contrib = (x.detach() * x.grad).float()
    if units == "heads":
        contrib = contrib.unflatten(-1, (-1, head_dim)).sum(-1)
    return contrib.reshape(contrib.shape[0], -1, contrib.shape[-1]).sum(1)


def per_example_stats(model: nn.Module, dataloader: Iterable, *, units: str, power: int, desc: str,
                      plan: PruningPlan | None = None, max_batches: int | None = None,
                      num_samples: int | None = None, show_progress: bool = True,
                      distributed: bool = True) -> tuple[dict[int, torch.Tensor], int]:
    """Sum over examples of |per-example gate gradient| ** power, per unit, divided by the token count.

    Taylor (power 1) and Fisher (power 2) differ only in the power; see `per_example_unit_grads`.

    Returns:
        `tuple[dict[int, Tensor], int]`: layer -> `[units]` scores, and the total token count (all processes).
    """
    head_dim = get_adapter(model).head_dim(model)
    sums: dict[int, torch.Tensor] = {}

    def on_batch(view: BatchView) -> None:
        for layer, x in view.activations.items():
            term = per_example_unit_grads(x, units, head_dim).abs().double().pow(power).sum(0)
            sums[layer] = sums[layer] + term if layer in sums else term

    tokens = gated_passes(model, dataloader, units=units, on_batch=on_batch, plan=plan, keep_activations=True,
                          max_batches=max_batches, num_samples=num_samples, show_progress=show_progress, desc=desc)
    layers = sorted(sums)
    means, total = sum_per_token([sums[i] for i in layers], tokens, distributed)
    return dict(zip(layers, means)), total
