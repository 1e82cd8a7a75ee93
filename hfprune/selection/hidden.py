"""Hidden channels: scores -> `PruningPlan(hidden=...)`, the lowest-scored channels of the residual stream."""

from __future__ import annotations

import math

import torch

from ..importance.common import carried_structure
from ..plan import PruningPlan


def select_hidden(scores, *, ratio: float, round_to: int | None = None) -> PruningPlan:
    """Remove the fraction `ratio` of hidden channels with the lowest scores.

    Args:
        scores (`torch.Tensor`): `[hidden_size]`, from `hfprune.hidden_importance` (higher = keep).
        ratio (`float`): fraction to remove, in [0, 1) (at least one channel stays).
        round_to (`int`, *optional*): round the kept width up to a multiple of this (fewer removed), e.g. 8 or 64
            for fast kernels, or the head count for configs that require `hidden_size % num_heads == 0`.

    Returns:
        `PruningPlan` with `hidden` filled and the options in `meta`.

    Raises:
        ValueError: a ratio outside [0, 1), a bad `round_to`, or NaN scores (nothing is selected).

    Example:
        ```python
        >>> plan = hfprune.select_hidden(torch.tensor([0.3, 0.1, 0.9, 0.5]), ratio=0.5)
        >>> plan.hidden
        [0, 1]
        ```
    """
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not math.isfinite(ratio) \
            or not 0.0 <= ratio < 1.0:
        raise ValueError(f"select_hidden: ratio must be a number in [0, 1) (the fraction of hidden channels to "
                         f"remove; at least one channel stays), got {ratio!r}")
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1):
        raise ValueError(f"select_hidden: round_to must be an integer >= 1, got {round_to!r}")
    row = torch.as_tensor(scores).detach().float().cpu().flatten()
    if row.numel() == 0:
        raise ValueError("select_hidden: scores are empty")
    if torch.isnan(row).any():
        raise ValueError(f"select_hidden: score of channel {int(torch.isnan(row).nonzero()[0])} is NaN")
    size = int(row.numel())
    kept = max(1, size - int(round(ratio * size)))
    if round_to:
        kept = min(size, math.ceil(kept / round_to) * round_to)
    order = torch.argsort(row, stable=True)  # lowest first; ties by index
    removed = sorted(int(i) for i in order[:size - kept])
    meta = {"selection": "hidden", "ratio": ratio, "round_to": round_to, "hidden_size": size,
            # the scorer's model structure, or the width bare scores imply (validate compares the keys it has)
            "model_structure": carried_structure(scores) or {"hidden_size": size}}
    return PruningPlan(hidden=removed, meta=meta)
