"""Weight importance for weight-level pruning: magnitude, first-order Taylor, random.

Magnitude |w| is the criterion of Han et al. 2015, "Learning both Weights and Connections for Efficient Neural
Networks". Taylor |w * dL/dw| is the first-order estimate of the loss change when a weight is zeroed (Molchanov et al.
2019, "Importance Estimation for Neural Network Pruning"), accumulated per batch over a dataloader with the model's
own loss. Random scores are the baseline every criterion should beat.

Scorers never change weights; `requires_grad` and train/eval mode are restored on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .targets import Target

CRITERIA = ("magnitude", "taylor", "random")


def magnitude_scores(targets: list[Target]) -> dict[str, torch.Tensor]:
    return {t.name: t.weight.detach().abs() for t in targets}


def random_scores(targets: list[Target], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {t.name: torch.rand(t.weight.shape, generator=generator).to(t.weight.device) for t in targets}


def _to_device(batch, device: torch.device) -> dict:
    if not isinstance(batch, Mapping):
        raise TypeError(f"taylor scoring needs batches that are dicts of model inputs (with labels); got "
                         f"{type(batch).__name__}")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


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


def compute_scores(model: nn.Module, targets: list[Target], criterion: str, dataloader: Iterable | None = None,
                   max_batches: int | None = None, seed: int = 0) -> dict[str, torch.Tensor]:
    if criterion == "magnitude":
        return magnitude_scores(targets)
    if criterion == "taylor":
        return taylor_scores(model, targets, dataloader, max_batches)
    if criterion == "random":
        return random_scores(targets, seed)
    raise ValueError(f"unknown criterion {criterion!r}; expected one of {CRITERIA}")
