"""Empirical Fisher importance of a unit's gate: the expected squared gradient of the loss w.r.t. the gate.

Theis et al. (2018), "Faster gaze prediction with dense networks and Fisher pruning"; Kwon et al. (2022), "A Fast
Post-Training Pruning Framework for Transformers" (the diagonal Fisher of head / neuron masks). Each example's term
is its share of the batch loss's gate gradient (sum over its tokens of a * dL/da), squared, summed over examples
and divided by the number of non-padding tokens. One forward + backward per batch, no per-example backward.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..passes import per_example_stats
from . import register_criterion
from ._rows import layer_rows


def _units(model, dataloader, units: str, *, plan=None, max_batches=None, num_samples=None, show_progress=True,
           distributed=True) -> list[torch.Tensor]:
    per_layer, _ = per_example_stats(model, dataloader, units=units, power=2, plan=plan, max_batches=max_batches,
                                     num_samples=num_samples, show_progress=show_progress, distributed=distributed,
                                     desc=f"{units[:-1]} importance (fisher)")
    return layer_rows(model, per_layer, units)


@register_criterion("fisher", units=("heads",), order=40, needs="gradients", needs_labels=True,
                    summary="squared per-example gradient of each head's gate, the diagonal Fisher (Kwon et al., 2022)")
def fisher_heads(model: nn.Module, dataloader: Iterable, *, plan=None, max_batches=None, num_samples=None,
                 show_progress=True, distributed=True, **common) -> list[torch.Tensor]:
    return _units(model, dataloader, "heads", plan=plan, max_batches=max_batches, num_samples=num_samples,
                  show_progress=show_progress, distributed=distributed)


@register_criterion("fisher", units=("neurons",), order=40, needs="gradients", needs_labels=True,
                    summary="squared per-example gradient of each neuron's gate (Kwon et al., 2022)")
def fisher_neurons(model: nn.Module, dataloader: Iterable, *, plan=None, max_batches=None, num_samples=None,
                   show_progress=True, distributed=True, **common) -> list[torch.Tensor]:
    return _units(model, dataloader, "neurons", plan=plan, max_batches=max_batches, num_samples=num_samples,
                  show_progress=show_progress, distributed=distributed)
