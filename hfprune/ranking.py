"""Ranking scores into what is kept, shared by the criteria, the unit selection and the weight sparsity (a neutral
place: each of them reads it, it reads none of them).

`SCOPES` are the two ways a ranking is cut: `"global"` (one ranking across every layer / tensor) or `"layer"` (each
layer / tensor on its own). `n_m_keep` keeps the N highest of every M consecutive scores along the last axis
(Mishra et al. 2021, N:M sparsity); `lowest_k` marks the k lowest entries of a vector, ties broken by position, so
counts are exact.
"""

from __future__ import annotations

import torch

SCOPES = ("global", "layer")


def n_m_keep(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Bool `(out, in)` keep-mask: in every group of `m` consecutive inputs of a row, the `n` highest scores."""
    out_f, in_f = scores.shape
    groups = scores.reshape(out_f, in_f // m, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(-1, groups.topk(n, dim=-1).indices, True)
    return keep.reshape(out_f, in_f)


def lowest_k(flat: torch.Tensor, k: int) -> torch.Tensor:
    """Bool mask of the `k` lowest entries of a 1-D tensor, ties broken by position."""
    pruned = torch.zeros_like(flat, dtype=torch.bool)
    if k > 0:
        pruned[torch.argsort(flat, stable=True)[:k]] = True
    return pruned
