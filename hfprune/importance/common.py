"""What the importance dispatchers share: the result type, argument checks, and the shaping of per-layer scores.

The batch handling, the scoring mode, token counting and the distributed sums live in `hfprune.passes`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass
class ImportanceResult:
    """Scores plus the secondary statistics gathered in the same pass.

    Args:
        scores (`torch.Tensor`): `[num_layers, max_heads]` importance (NaN where a layer has fewer heads).
        entropy (`torch.Tensor`, *optional*): `[num_layers, max_heads]` mean attention entropy per non-padding query
            token (nats), as in Michel et al. (2019), Section 6.
        num_tokens (`int`): the non-padding tokens the statistics are divided by (summed over processes).
        structure (`dict`, *optional*): `hfprune.model_structure` of the scored model (selection copies it into the
            plan, which then refuses any other structure).
    """

    scores: torch.Tensor
    entropy: torch.Tensor | None = None
    num_tokens: int = 0
    structure: dict | None = None


class ScoreList(list):
    """Per-layer score vectors (a plain list) that also carry the scored model's structure (`.structure`)."""

    structure: dict | None = None


def carry_structure(scores, structure: dict):
    """`scores` with `.structure` set: the structure of the model they were computed on, which the selection
    functions copy into the plan (`plan.meta["model_structure"]`). A tensor gets the attribute itself (a new tensor
    made from it, e.g. by slicing, does not); a list becomes a `ScoreList`."""
    if isinstance(scores, list) and not isinstance(scores, ScoreList):
        scores = ScoreList(scores)
    scores.structure = structure
    return scores


def carried_structure(scores) -> dict | None:
    """The structure `carry_structure` attached to `scores` (or an `ImportanceResult`), if any."""
    structure = getattr(scores, "structure", None)
    return structure if isinstance(structure, dict) else None


def check_ratio(name: str, value: float | None) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")


def pad_rows(rows: list[torch.Tensor]) -> torch.Tensor:
    """Stack per-layer vectors of different lengths into `[num_layers, max_len]` float32, NaN-padded, on CPU."""
    width = max((int(r.numel()) for r in rows), default=0)
    out = torch.full((len(rows), width), float("nan"), dtype=torch.float32)
    for i, row in enumerate(rows):
        out[i, :row.numel()] = row.detach().to("cpu", torch.float32)
    return out


def normalize_heads(scores: torch.Tensor, by_layer: bool = True, by_global: bool = True) -> torch.Tensor:
    """Michel et al.'s two normalisations: each layer divided by its L2 norm, then global min-max to [0, 1].

    NaN entries (heads that do not exist) stay NaN and are ignored by both. Neither changes a layer's ranking.
    """
    scores = scores.clone()
    valid = ~torch.isnan(scores)
    if by_layer:
        norm = torch.where(valid, scores, torch.zeros_like(scores)).pow(2).sum(-1).pow(0.5)
        scores = scores / (norm.unsqueeze(-1) + 1e-20)
    if by_global and valid.any():
        lo, hi = scores[valid].min(), scores[valid].max()
        scores = (scores - lo) / (hi - lo) if hi > lo else torch.where(valid, torch.zeros_like(scores), scores)
    return scores
