"""First-order Taylor importance of Molchanov et al. (2017), "Pruning Convolutional Neural Networks for Resource
Efficient Inference" (ICLR 2017), for FFN neurons and attention heads.

Theta(u) = |sum over tokens of a_u * dL/da_u|, taken per example and summed over examples, divided by the number of
non-padding tokens. a_u is the unit's activation at its gate (a neuron at the down-projection input, a head's
context at the output-projection input), so the inner sum is the example's share of dL/dg_u. It differs from
Michel's criterion only in where the absolute value is taken: per example here, per batch there.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..plan import PruningPlan
from .common import all_reduce_sum
from .gradients import BatchView, gated_passes, per_example_unit_grads


def per_example_stats(model: nn.Module, dataloader: Iterable, *, units: str, power: int, desc: str,
                      plan: PruningPlan | None = None, max_batches: int | None = None,
                      num_samples: int | None = None, show_progress: bool = True,
                      distributed: bool = True) -> tuple[dict[int, torch.Tensor], int]:
    """Sum over examples of |per-example gate gradient| ** power, per unit, divided by the token count.

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
    if not layers:
        return {}, tokens
    device = sums[layers[0]].device
    reduced = all_reduce_sum([*(sums[i] for i in layers), torch.tensor(float(tokens), dtype=torch.float64,
                                                                         device=device)], enabled=distributed)
    total = float(reduced[-1])
    if total <= 0:
        raise ValueError("the batches contain no non-padding token (attention_mask sums to 0)")
    return {layer: reduced[i] / total for i, layer in enumerate(layers)}, round(total)


def taylor_stats(model: nn.Module, dataloader: Iterable, *, units: str, **kwargs):
    """Taylor importance of `units` ("heads" or "neurons"); see `per_example_stats` for the keyword arguments."""
    return per_example_stats(model, dataloader, units=units, power=1, desc=f"{units[:-1]} importance (taylor)",
                             **kwargs)
