"""Sparsity patterns and the selection of what to prune: unstructured, N:M and blocks, per tensor or global.

Scores are read in the (out, in) layout of `nn.Linear`; a unit (one weight, or one block) with a lower score is pruned
first. Counts are exact: ties are broken by position, so a tensor of `n` units at sparsity `s` loses exactly
`round(s * n)` of them (layer scope), or the whole set of targets loses `round(s * total)` (global scope).

N:M sparsity follows Mishra et al. 2021, "Accelerating Sparse Deep Neural Networks" (2:4 on NVIDIA Ampere): in every
group of M consecutive weights along the input dimension, N are kept.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from ..ranking import lowest_k, n_m_keep
from .targets import Target


@dataclass(frozen=True)
class Pattern:
    """A parsed pattern: `unstructured`, N:M (`"2:4"`), or blocks of rows x cols (`"1x4"`, `"4x4"`)."""

    kind: str  # "unstructured" | "n:m" | "block"
    n: int = 0
    m: int = 0
    rows: int = 1
    cols: int = 1

    @property
    def fixed_sparsity(self) -> float | None:
        return 1.0 - self.n / self.m if self.kind == "n:m" else None

    def __str__(self) -> str:
        if self.kind == "n:m":
            return f"{self.n}:{self.m}"
        return "unstructured" if self.kind == "unstructured" else f"{self.rows}x{self.cols}"


def parse_pattern(spec: str) -> Pattern:
    """Parse `"unstructured"`, `"N:M"` (0 < N < M) or `"RxC"` (block of R output rows by C input columns)."""
    if not isinstance(spec, str):
        raise TypeError(f"pattern must be a string such as 'unstructured', '2:4' or '4x4'; got {spec!r}")
    text = spec.strip().lower()
    if text == "unstructured":
        return Pattern("unstructured")
    if match := re.fullmatch(r"(\d+):(\d+)", text):
        n, m = int(match[1]), int(match[2])
        if not 0 < n < m:
            raise ValueError(f"pattern {spec!r}: N:M needs 0 < N < M (keep N of every M weights)")
        return Pattern("n:m", n=n, m=m)
    if match := re.fullmatch(r"(?:block:)?(\d+)x(\d+)", text):
        rows, cols = int(match[1]), int(match[2])
        if rows < 1 or cols < 1 or rows * cols == 1:
            raise ValueError(f"pattern {spec!r}: a block needs positive sides and more than one weight "
                             "(use 'unstructured' for single weights)")
        return Pattern("block", rows=rows, cols=cols)
    raise ValueError(f"unknown pattern {spec!r}; expected 'unstructured', 'N:M' (e.g. '2:4') or 'RxC' (e.g. '4x4')")


def check_shapes(targets: list[Target], pattern: Pattern) -> None:
    """Raise before anything changes if a target's shape does not fit `pattern`."""
    for target in targets:
        out_f, in_f = target.canonical(target.weight).shape
        if pattern.kind == "n:m" and in_f % pattern.m:
            raise ValueError(f"pattern '{pattern}' needs every target's input size divisible by M={pattern.m}; "
                             f"{target.key} has input size {in_f}")
        if pattern.kind == "block" and (out_f % pattern.rows or in_f % pattern.cols):
            raise ValueError(f"pattern '{pattern}' needs every target's (out, in) shape divisible by "
                             f"({pattern.rows}, {pattern.cols}); {target.key} is ({out_f}, {in_f})")


def _unit_scores(scores: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """(out, in) element scores -> scores per unit (a block's score is the sum of its weights' scores)."""
    if pattern.kind != "block":
        return scores
    out_f, in_f = scores.shape
    return scores.reshape(out_f // pattern.rows, pattern.rows, in_f // pattern.cols, pattern.cols).sum(dim=(1, 3))


def _expand(unit_keep: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    if pattern.kind != "block":
        return unit_keep
    return unit_keep.repeat_interleave(pattern.rows, 0).repeat_interleave(pattern.cols, 1)


def _unit_prior(prior_keep: torch.Tensor, pattern: Pattern) -> torch.Tensor:
    """Units that `prior_keep` already prunes (a block counts as pruned when none of its weights is kept)."""
    if pattern.kind != "block":
        return ~prior_keep
    out_f, in_f = prior_keep.shape
    blocks = prior_keep.reshape(out_f // pattern.rows, pattern.rows, in_f // pattern.cols, pattern.cols)
    return ~blocks.any(dim=3).any(dim=1)


def _global_prune(units: list[torch.Tensor], sparsity: float) -> list[torch.Tensor]:
    """Prune the lowest `round(sparsity * total)` units across all tensors.

    A full argsort of every score (85M for bert-base) would need 8 bytes per weight of indices; the k-th value as a
    threshold plus a positional tie-break needs none.
    """
    total = sum(u.numel() for u in units)
    k = round(sparsity * total)
    if k == 0:
        return [torch.zeros_like(u, dtype=torch.bool) for u in units]
    flat = torch.cat([u.reshape(-1) for u in units])
    threshold = flat.kthvalue(k).values
    del flat
    pruned = [u < threshold for u in units]
    remaining = k - sum(int(p.sum()) for p in pruned)
    for unit, mask in zip(units, pruned):
        if remaining <= 0:
            break
        ties = (unit == threshold).reshape(-1).nonzero().squeeze(1)[:remaining]
        mask.view(-1)[ties] = True
        remaining -= ties.numel()
    return pruned


def select_masks(targets: list[Target], scores: dict[str, torch.Tensor], sparsity: float, pattern: Pattern,
                 scope: str = "layer", prior: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks (True = keep), shaped like each weight, pruning the lowest-scoring units.

    Args:
        targets (`list[Target]`): the tensors.
        scores (`dict[str, torch.Tensor]`): module name -> element scores shaped like its weight (higher = keep).
        sparsity (`float`): fraction of units to prune, in [0, 1) (ignored for N:M, whose sparsity is fixed).
        pattern (`Pattern`): the pattern.
        scope (`str`, defaults to `"layer"`): `"layer"` prunes each tensor to `sparsity`; `"global"` ranks all units
            of all targets together.
        prior (`dict[str, torch.Tensor]`, *optional*): previous keep-masks; units they prune stay pruned (gradual
            pruning only ever adds zeros).
    """
    units = []
    for target in targets:
        unit = _unit_scores(target.canonical(scores[target.name]).float(), pattern)
        if not torch.isfinite(unit).all():
            raise ValueError(f"scores of {target.key} contain inf/nan (are its weights finite?)")
        if prior is not None and target.name in prior:
            unit = unit.masked_fill(_unit_prior(target.canonical(prior[target.name]), pattern), float("-inf"))
        units.append(unit)
    if pattern.kind == "n:m":
        keeps = [n_m_keep(u, pattern.n, pattern.m) for u in units]
    else:
        if scope == "global":
            pruned = _global_prune(units, sparsity)
        else:
            pruned = [lowest_k(u.reshape(-1), round(sparsity * u.numel())).view_as(u) for u in units]
        keeps = [_expand(~p, pattern) for p in pruned]
    return {t.name: t.from_canonical(k) for t, k in zip(targets, keeps)}
