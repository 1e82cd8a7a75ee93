"""Wanda: prune the weights with the smallest |W_ij| * ||X_j||_2, compared within each output row.

Paper: Sun, Liu, Bair and Kolter 2023, "A Simple and Effective Pruning Approach for Large Language Models". The score
of weight (i, j) of a Linear layer is its magnitude times the L2 norm of input feature j over all calibration tokens;
each output row loses the same fraction of its weights (for N:M, the N highest of every M consecutive inputs are
kept). No weight is updated. The calibration data runs block by block (`criteria/_blockwise.py` on the block walker
of `hfprune.passes`), so each block is scored on the outputs of the already pruned blocks before it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from ..ranking import n_m_keep
from . import BlockwiseResult, register_criterion
from ._blockwise import TRUE_SEQUENTIAL, prune_blocks

if TYPE_CHECKING:
    from ..sparsity.patterns import Pattern


# Elements sorted at once by `row_keep` (a row-wise ranking: chunking the rows changes nothing but the memory).
ROW_CHUNK = 2**22


class ColumnNorms:
    """Running sum of x_j^2 over every calibration token, per input feature j.

    Each batch's sum is float32; the running sum over batches is float64 (a vector per layer: free), so the norms
    do not drift with the number of calibration batches.
    """

    def __init__(self, in_features: int):
        self.sum_sq = None
        self.in_features = in_features

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        part = x.pow(2).sum(dim=0).double()
        self.sum_sq = part if self.sum_sq is None else self.sum_sq.add_(part)


def wanda_scores(weight: torch.Tensor, sum_sq: torch.Tensor) -> torch.Tensor:
    """|W| * ||X_j||_2 for an (out, in) weight and the per-input sums of squares."""
    return weight.abs().mul_(sum_sq.sqrt().unsqueeze(0))  # one (out, in) temporary, not two


def row_keep(scores: torch.Tensor, sparsity: float, pattern: Pattern) -> torch.Tensor:
    """Keep-mask: per row, the lowest `round(sparsity * in)` scores are pruned (ties by position), or N:M."""
    if pattern.kind == "n:m":
        return n_m_keep(scores, pattern.n, pattern.m)
    k = round(sparsity * scores.shape[1])
    keep = torch.ones_like(scores, dtype=torch.bool)
    if k:
        step = max(1, ROW_CHUNK // scores.shape[1])  # rows at a time: the sort's temporaries stay small
        for start in range(0, scores.shape[0], step):
            rows = slice(start, start + step)
            keep[rows].scatter_(1, torch.argsort(scores[rows], dim=1, stable=True)[:, :k], False)
    return keep


@register_criterion("wanda", units=("weights",), needs="blocks", order=30, options={"true_sequential": TRUE_SEQUENTIAL},
                    summary="|W| x ||X_col||, compared within each output row, block by block (Sun et al. 2023)")
def wanda(model, dataloader, *, targets, sparsity: float, pattern: Pattern, device=None,
          originals: dict | None = None, true_sequential: bool = False, walk=None) -> BlockwiseResult:
    """Wanda masks for `targets`, computed and applied block by block (the weights are zeroed in place).

    Args:
        model (`nn.Module`): the model.
        dataloader: calibration batches (`hfprune.calibration_batches`, or any iterable of batch dicts).
        targets (`list[Target]`): Linear / Conv1D layers inside the model's blocks.
        sparsity (`float`): fraction pruned per output row (unstructured).
        pattern (`Pattern`): `unstructured` or N:M.
        device (*optional*): where each block is processed (blocks move there one at a time).
        originals (`dict`, *optional*): filled with a CPU copy of each weight before it changes (the handle's
            `remove()` restores them).
        walk (*optional*): who brings the blocks (`criteria._blockwise.prune_blocks`; `hfprune.stream` streams
            them from a checkpoint); default: the model's own blocks.
        true_sequential (`bool`, defaults to `False`): collect each block's statistics in stages (q/k/v -> o ->
            gate/up -> down for Llama), each after the earlier stages of the block were pruned; `False`: every
            target of a block from one forward of the unpruned block (the Wanda reference code). The default is
            measured on SmolLM2-135M: stages gave 44.62 vs 45.08 at 50% but 159.35 vs 158.38 at 2:4 (docs/llm.md).

    Returns:
        `BlockwiseResult`: masks, originals and the run's `info` (peak memory, seconds).
    """

    def solve(target, weight, stat):
        if stat.sum_sq is None:
            raise RuntimeError(f"{target.name} received no input during calibration (is it used in the forward?)")
        return row_keep(wanda_scores(weight, stat.sum_sq.to(weight.device)), sparsity, pattern), None

    masks, info = prune_blocks(model, targets, dataloader, lambda t: ColumnNorms(t.canonical(t.weight).shape[1]),
                               solve, device=device, originals=originals, true_sequential=true_sequential, walk=walk)
    return BlockwiseResult(masks, originals, info)
