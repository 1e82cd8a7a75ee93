"""Empirical Fisher importance of a unit's gate: the expected squared gradient of the loss w.r.t. the gate.

Theis et al. (2018), "Faster gaze prediction with dense networks and Fisher pruning"; Kwon et al. (2022), "A Fast
Post-Training Pruning Framework for Transformers" (the diagonal Fisher of head / neuron masks). Each example's term
is its share of the batch loss's gate gradient (sum over its tokens of a * dL/da), squared, summed over examples
and divided by the number of non-padding tokens. One forward + backward per batch, no per-example backward.
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

from .taylor import per_example_stats


def fisher_stats(model: nn.Module, dataloader: Iterable, *, units: str, **kwargs):
    """Fisher importance of `units` ("heads" or "neurons"); see `taylor.per_example_stats` for the keywords."""
    return per_example_stats(model, dataloader, units=units, power=2, desc=f"{units[:-1]} importance (fisher)",
                             **kwargs)
