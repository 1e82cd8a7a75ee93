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

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch
from torch import nn

from ..passes import per_example_stats
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
def _to_device(batch, device: torch.device) -> dict:
    if not isinstance(batch, Mapping):
        raise TypeError(f"taylor scoring needs batches that are dicts of model inputs (with labels); got "
                         f"{type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _sum_over_processes(scores: list[torch.Tensor], batches: int) -> int:
    """Under torch.distributed, sum the scores (in place) and batch counts over processes; returns the total count.

    Each process scores its own shard of the data (a DDP / `accelerate` dataloader), so without this every process
    would pick different masks and the replicas would drift apart: DDP averages the gradients, but each process would
    zero different weights after every step.
    """
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return batches
    device = scores[0].device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        device = torch.device("cuda", torch.cuda.current_device())
    for score in scores:  # one tensor at a time: no second copy of every weight's score
        buffer = score.to(device)
        dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
        score.copy_(buffer)
    count = torch.tensor([batches], dtype=torch.int64, device=device)
    dist.all_reduce(count, op=dist.ReduceOp.SUM)
    return int(count.item())


def taylor_scores(model: nn.Module, targets: list[Target], dataloader: Iterable,
                  max_batches: int | None = None) -> dict[str, torch.Tensor]:
    """Sum over batches of |w * dL/dw| for every target weight (eval mode, so dropout does not add noise).

    Under torch.distributed the sums are added over processes, so every process gets the same scores (and masks);
    call it on every process then.

    Args:
        model (`nn.Module`): a model that returns `.loss` when its batch carries labels.
        targets (`list[Target]`): the weights to score.
        dataloader (`Iterable[dict]`): batches of model inputs with `labels`.
        max_batches (`int`, *optional*): stop after this many batches.
    """
    if dataloader is None:
        raise ValueError("criterion='taylor' needs a dataloader of labelled batches (the model's loss is used)")
    params = [t.weight for t in targets]
    flags = {p: p.requires_grad for p in model.parameters()}
    was_training = model.training
    device = params[0].device
    scores = [torch.zeros_like(p, dtype=torch.float32) for p in params]
    batches = 0
    try:
        model.eval()
        for p in flags:
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        for batch in dataloader:
            if max_batches is not None and batches >= max_batches:
                break
            inputs = _to_device(batch, device)
            loss = getattr(model(**inputs), "loss", None)
            if loss is None:
                raise ValueError(f"taylor scoring: the model returned no loss for a batch with keys "
                                 f"{sorted(inputs)}; include 'labels'")
            # autograd.grad leaves every .grad untouched, so scoring cannot disturb a training loop around it.
            grads = torch.autograd.grad(loss, params)
            for score, p, g in zip(scores, params, grads):
                score.add_((p.detach() * g).abs_())
            batches += 1
    finally:
        for p, flag in flags.items():
            p.requires_grad_(flag)
        model.train(was_training)
    batches = _sum_over_processes(scores, batches)
    if batches == 0:
        raise ValueError("taylor scoring: the dataloader yielded no batches")
    return {t.name: s for t, s in zip(targets, scores)}


@register_criterion("taylor", units=("weights",), order=20, needs="gradients", needs_labels=True,
                    summary="|w * dL/dw| summed over the dataloader's batches (Molchanov et al., 2019)")
def taylor_weights(model: nn.Module, dataloader: Iterable, *, targets: list[Target], max_batches=None,
                   **common) -> dict[str, torch.Tensor]:
    return taylor_scores(model, targets, dataloader, max_batches)
