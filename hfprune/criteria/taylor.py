"""First-order Taylor importance: of FFN neurons and attention heads (Molchanov et al., 2017) and of single weights
(Molchanov et al., 2019).

Units: Molchanov et al. (2017), "Pruning Convolutional Neural Networks for Resource Efficient Inference" (ICLR 2017).
Theta(u) = |sum over tokens of a_u * dL/da_u|, taken per example and summed over examples, divided by the number of
non-padding tokens. a_u is the unit's activation at its gate (a neuron at the down-projection input, a head's
context at the output-projection input), so the inner sum is the example's share of dL/dg_u. It differs from
Michel's criterion only in where the absolute value is taken: per example here, per batch there.

Weights: |w * dL/dw|, the first-order estimate of the loss change when a weight is zeroed (Molchanov et al. 2019,
"Importance Estimation for Neural Network Pruning"), summed over batches with the model's own loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..passes import all_reduce_sum_, per_example_stats, weight_gradient_passes
from . import register_criterion
from ._rows import layer_rows

if TYPE_CHECKING:
    from ..sparsity.targets import Target


def _units(model, dataloader, units: str, *, plan=None, max_batches=None, num_samples=None, show_progress=True,
           distributed=True) -> list[torch.Tensor]:
    per_layer, _ = per_example_stats(model, dataloader, units=units, power=1, plan=plan, max_batches=max_batches,
                                     num_samples=num_samples, show_progress=show_progress, distributed=distributed,
                                     desc=f"{units[:-1]} importance (taylor)")
    return layer_rows(model, per_layer, units)


@register_criterion("taylor", units=("heads",), order=20, needs="gradients", needs_labels=True,
                    summary="|per-example a * dL/da| at each head's context (Molchanov et al., 2017)")
def taylor_heads(model: nn.Module, dataloader: Iterable, *, plan=None, max_batches=None, num_samples=None,
                 show_progress=True, distributed=True, **common) -> list[torch.Tensor]:
    return _units(model, dataloader, "heads", plan=plan, max_batches=max_batches, num_samples=num_samples,
                  show_progress=show_progress, distributed=distributed)


@register_criterion("taylor", units=("neurons",), order=20, needs="gradients", needs_labels=True,
                    summary="|per-example a * dL/da| at each FFN neuron (Molchanov et al., 2017)")
def taylor_neurons(model: nn.Module, dataloader: Iterable, *, plan=None, max_batches=None, num_samples=None,
                   show_progress=True, distributed=True, **common) -> list[torch.Tensor]:
    return _units(model, dataloader, "neurons", plan=plan, max_batches=max_batches, num_samples=num_samples,
                  show_progress=show_progress, distributed=distributed)


# ----- single weights -------------------------------------------------------------------------------------------------
def taylor_scores(model: nn.Module, targets: list[Target], dataloader: Iterable,
                  max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """Sum over batches of |w * dL/dw| for every target weight (eval mode, so dropout does not add noise).

    Under torch.distributed the sums are added over processes, so every process gets the same scores (and masks);
    call it on every process then. Each process scores its own shard of the data (a DDP / `accelerate`
    dataloader), so without this every process would pick different masks and the replicas would drift apart.

    Args:
        model (`nn.Module`): a model that returns `.loss` when its batch carries labels.
        targets (`list[Target]`): the weights to score.
        dataloader (`Iterable[dict]`): batches of model inputs with `labels`.
        max_batches (`int`, *optional*): stop after this many batches.
    """
    if dataloader is None:
        raise ValueError("criterion='taylor' needs a dataloader of labelled batches (the model's loss is used)")
    params = [t.weight for t in targets]
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]

    def on_batch(grads: tuple[torch.Tensor, ...]) -> None:
        for score, p, g in zip(scores, params, grads):
            score.add_((p.detach() * g).abs_())

    weight_gradient_passes(model, params, dataloader, on_batch, max_batches=max_batches)
    all_reduce_sum_(scores)  # one tensor at a time: no second copy of every weight's score
    return {t.name: s for t, s in zip(targets, scores)}


@register_criterion("taylor", units=("weights",), order=20, needs="gradients", needs_labels=True,
                    summary="|w * dL/dw| summed over the dataloader's batches (Molchanov et al., 2019)")
def taylor_weights(model: nn.Module, dataloader: Iterable, *, targets: list[Target], max_batches=None,
                   **common) -> dict[str, torch.Tensor]:
    return taylor_scores(model, targets, dataloader, max_batches)
