"""SparseGPT: layer-wise OBS reconstruction; masks chosen and the remaining weights updated from the inverse Hessian.

Paper: Frantar and Alistarh 2023, "SparseGPT: Massive Language Models Can Be Accurately Pruned in One-Shot". For a
Linear layer with calibration inputs X (in x tokens), the layer-wise problem min ||W X - W' X||^2 has the Hessian
H = 2 X X^T. Columns are processed left to right in blocks of `blocksize` (128): within a block the mask is chosen
by the OBS saliency w^2 / [H^-1]_jj^2 (adaptive mask selection: per block for unstructured sparsity, per group of
M columns for N:M), each pruned column's error is spread over the columns to its right with the row of the upper
Cholesky factor of H^-1, and the updates to later blocks are applied once per block (lazy batch updates).
H is dampened by `percdamp` (0.01) times its mean diagonal before the inversion.

Precision: each batch's X X^T is a float32 product (as in the reference code), but the running sum over batches,
the dampened Cholesky / inverse / Cholesky of H and the column-by-column OBS updates run in float64 by default
(`precision="float64"`): with 1% dampening H^-1 can have a condition number near 1e4-1e5, where float32's
relative error of 6e-8 is no longer small, and the updates of later columns accumulate over all columns before
them. The matrices are (in x in) per layer, so this costs little on a CPU; `precision="float32"` is the reference
code's arithmetic (faster on GPUs with slow float64).

The calibration data runs block by block of the model (`criteria/_blockwise.py` on the block walker of
`hfprune.passes`), each block on the outputs of the already pruned and reconstructed blocks before it. GPT-2's
`Conv1D` (weight stored as (in, out)) is handled through its transposed view; any other module type is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from . import BlockwiseResult, Option, register_criterion
from ._blockwise import TRUE_SEQUENTIAL, prune_blocks

if TYPE_CHECKING:
    from ..sparsity.patterns import Pattern


class Hessian:
    """Running X X^T of a layer's inputs (on the inputs' device) and the number of tokens seen.

    Each batch's product is float32; the sum over batches is kept in `dtype`.
    """

    def __init__(self, in_features: int, dtype: torch.dtype = torch.float64):
        self.in_features = in_features
        self.dtype = dtype
        self.xtx = None
        self.count = 0

    def add(self, x: torch.Tensor) -> None:
        x = x.reshape(-1, x.shape[-1]).float()
        part = (x.t() @ x).to(self.dtype)
        self.xtx = part if self.xtx is None else self.xtx.add_(part)
        self.count += x.shape[0]

    def matrix(self) -> torch.Tensor:
        """H = 2 X X^T / tokens (the scale does not change the result; it keeps float32 in range).

        Scaled in place and handed over (the running sum is gone afterwards): the solver then holds one fewer
        (in x in) matrix, 18 MiB in float64 for a 1536-wide input.
        """
        hessian, self.xtx = self.xtx.mul_(2.0 / max(1, self.count)), None
        return hessian


def _upper_inverse_cholesky(hessian: torch.Tensor, percdamp: float, name: str) -> torch.Tensor:
    """Upper Cholesky factor of (H + percdamp * mean(diag H) * I)^-1.

    `hessian` is overwritten (its memory receives the inverse), so no more than two (in x in) matrices are alive.
    """
    diag = torch.arange(hessian.shape[0], device=hessian.device)
    hessian[diag, diag] += percdamp * torch.mean(torch.diag(hessian))
    factor, info = torch.linalg.cholesky_ex(hessian)
    if info.item() == 0:
        torch.cholesky_inverse(factor, out=hessian)
        del factor
        factor, info = torch.linalg.cholesky_ex(hessian, upper=True)
    if info.item() != 0:
        raise ValueError(f"SparseGPT: the dampened Hessian of {name} is not positive definite; raise percdamp "
                         f"(now {percdamp}) or give more calibration tokens")
    return factor


PRECISIONS = {"float32": torch.float32, "float64": torch.float64}
OPTIONS = {
    "blocksize": Option(lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1, "a positive integer"),
    "percdamp": Option(lambda v: isinstance(v, (int, float)) and 0 <= v < 1, "in [0, 1)"),
    "true_sequential": TRUE_SEQUENTIAL,
    "precision": Option(lambda v: v in PRECISIONS, "'float32' or 'float64'"),
}


def _block_prune_count(sparsity: float, rows: int, start: int, end: int) -> int:
    """Weights pruned in columns [start, end): the blocks' counts add up to exactly round(sparsity * total)."""
    return round(sparsity * rows * end) - round(sparsity * rows * start)


def sparsegpt_solve(weight: torch.Tensor, hessian: torch.Tensor, sparsity: float, pattern: Pattern,
                    blocksize: int = 128, percdamp: float = 0.01, name: str = "layer"):
    """Keep-mask and reconstructed weight of one (out, in) weight from its Hessian (changed in place).

    The solve runs in the Hessian's dtype (float64 from `sparsegpt(precision="float64")`).

    Returns:
        `(keep, new_weight)`: bool (out, in) mask, True = kept; the updated weight (pruned entries are 0), in the
        weight's dtype.
    """
    W = weight.to(hessian.dtype, copy=True, memory_format=torch.contiguous_format)
    rows, cols = W.shape
    dead = torch.diag(hessian) == 0  # inputs that were always zero: their weights cannot matter
    hessian[dead, dead] = 1
    W[:, dead] = 0
    hinv = _upper_inverse_cholesky(hessian, percdamp, name)
    keep = torch.ones_like(W, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        W1, hinv1 = W[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        d = torch.diag(hinv1)
        err1 = torch.zeros_like(W1)
        prune1 = torch.zeros_like(W1, dtype=torch.bool)
        if pattern.kind != "n:m":
            saliency = (W1.pow(2) / d.pow(2).unsqueeze(0)).reshape(-1)
            k = _block_prune_count(sparsity, rows, i1, i2)
            prune1.view(-1)[torch.argsort(saliency, stable=True)[:k]] = True
        for i in range(i2 - i1):
            if pattern.kind == "n:m" and i % pattern.m == 0:
                group = W1[:, i:i + pattern.m].pow(2) / d[i:i + pattern.m].pow(2).unsqueeze(0)
                lowest = torch.topk(group, pattern.m - pattern.n, dim=1, largest=False).indices
                prune1.scatter_(1, i + lowest, True)
            w = W1[:, i]
            q = w.masked_fill(prune1[:, i], 0)
            err = (w - q) / hinv1[i, i]
            # OBS update: the columns to the right of i (in this block) absorb column i's pruning error.
            W1[:, i:] -= err.unsqueeze(1) @ hinv1[i, i:].unsqueeze(0)
            W1[:, i] = q
            err1[:, i] = err
        W[:, i1:i2] = W1
        keep[:, i1:i2] = ~prune1
        W[:, i2:] -= err1 @ hinv[i1:i2, i2:]  # lazy batch update of every later block at once
    return keep, W.masked_fill(~keep, 0).to(weight.dtype)


@register_criterion("sparsegpt", units=("weights",), needs="blocks", updates_weights=True, order=40, options=OPTIONS,
                    summary="OBS reconstruction with the inverse Hessian of the calibration inputs, block by block "
                            "(Frantar & Alistarh 2023)")
def sparsegpt(model, dataloader, *, targets, sparsity: float, pattern: Pattern, device=None, blocksize: int = 128,
              percdamp: float = 0.01, originals: dict | None = None,
              true_sequential: bool = True, precision: str = "float64", walk=None) -> BlockwiseResult:
    """SparseGPT masks and reconstructed weights for `targets`, block by block (the weights change in place).

    Args:
        model (`nn.Module`): the model.
        dataloader: calibration batches (`hfprune.calibration_batches`, or any iterable of batch dicts).
        targets (`list[Target]`): Linear / Conv1D layers inside the model's blocks.
        sparsity (`float`): fraction pruned per layer (unstructured; exact count per tensor).
        pattern (`Pattern`): `unstructured` or N:M.
        device (*optional*): where each block is processed (blocks move there one at a time).
        blocksize (`int`, defaults to 128): columns per lazy-update block (a multiple of M for N:M).
        percdamp (`float`, defaults to 0.01): dampening, as a fraction of the Hessian's mean diagonal.
        originals (`dict`, *optional*): filled with a CPU copy of each weight before it changes (the handle's
            `remove()` restores them).
        walk (*optional*): who brings the blocks (`criteria._blockwise.prune_blocks`; `hfprune.stream` streams
            them from a checkpoint); default: the model's own blocks.
        true_sequential (`bool`, defaults to `True`): collect each block's Hessians in stages (q/k/v -> o ->
            gate/up -> down for Llama), each after the earlier stages of the block were pruned and reconstructed
            (the reference code's `--true-sequential`); `False`: every target of a block from one forward (as
            llm-compressor). The default is measured: SmolLM2-135M 2:4 perplexity 85.98 vs 92.61 (docs/llm.md).
        precision (`str`, defaults to `"float64"`): dtype of the Hessian's running sum, its inversion and the OBS
            updates (`"float32"`: the reference code's arithmetic); see the module docstring.

    Returns:
        `BlockwiseResult`: masks, originals and the run's `info` (peak memory, seconds).
    """
    if pattern.kind == "n:m" and blocksize % pattern.m:
        raise ValueError(f"blocksize={blocksize} must be a multiple of M={pattern.m} for pattern '{pattern}'")
    for target in targets:
        if not (isinstance(target.module, nn.Linear) or target.transposed):  # nn.Linear or GPT-2's Conv1D
            raise ValueError(f"SparseGPT reconstructs nn.Linear (and GPT-2 Conv1D) weights; {target.name} is a "
                             f"{type(target.module).__name__}")

    def solve(target, weight, stat):
        if stat.xtx is None:  # never filled (matrix() is called once, here)
            raise RuntimeError(f"{target.name} received no input during calibration (is it used in the forward?)")
        return sparsegpt_solve(weight, stat.matrix().to(weight.device), sparsity, pattern, blocksize, percdamp,
                               target.name)

    dtype = PRECISIONS[precision]
    masks, info = prune_blocks(model, targets, dataloader, lambda t: Hessian(t.canonical(t.weight).shape[1], dtype),
                               solve, device=device, originals=originals, true_sequential=true_sequential, walk=walk)
    return BlockwiseResult(masks, originals, info)
