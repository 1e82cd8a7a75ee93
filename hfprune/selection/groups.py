"""Selection per channel group (CNN channels): channel scores -> `PruningPlan(channels=...)`.

A unit of selection is one channel, or a whole group of a grouped convolution (RegNet: `groups_width` channels,
scored by their mean); a coupled group (a residual path) is selected like any other group and removed together by
surgery. `scope="global"` ranks every unit of every group under one threshold (Network Slimming on `bn_scale`),
`scope="layer"` removes the same fraction from each group (Li et al.'s per-layer L1).
"""

from __future__ import annotations

import math

import torch

from ..importance.common import carried_structure, check_ratio
from ..plan import PruningPlan
from ..ranking import SCOPES


def _units(scores, name: str) -> tuple[torch.Tensor, int]:
    """Per-unit scores of one group and its granularity (channels per unit)."""
    row = torch.as_tensor(scores[name]).detach().float().cpu().flatten()
    groups = getattr(scores, "groups", None) or {}
    gran = groups[name].granularity if name in groups else 1
    if row.numel() % gran:
        raise ValueError(f"select_channels: group {name!r} has {row.numel()} scores, not a multiple of its "
                         f"grouped-convolution width {gran}")
    if torch.isnan(row).any():
        raise ValueError(f"select_channels: group {name!r} has NaN scores")
    return row.view(-1, gran).mean(1), gran


def _check(ratio, scope, round_to, min_per_group) -> None:
    if ratio is None:
        raise ValueError("select_channels: ratio= is required (the fraction of channels to remove)")
    check_ratio("select_channels: ratio", ratio)
    if scope not in SCOPES:
        raise ValueError(f"select_channels: scope must be one of {SCOPES}, got {scope!r}")
    for name, value, low in (("round_to", round_to, 1), ("min_per_group", min_per_group, 1)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
            raise ValueError(f"select_channels: {name} must be an integer >= {low}, got {value!r}")


def select_channels(scores, *, ratio: float | None = None, scope: str = "global", round_to: int | None = None,
                    min_per_group: int = 1) -> PruningPlan:
    """Remove the lowest-scored channels, over all groups ("global") or the same fraction of each ("layer").

    Args:
        scores (`ChannelScores` or `dict[str, Tensor]`): from `hfprune.channel_importance` (higher = keep).
        ratio (`float`): fraction of the scored channels to remove, in [0, 1].
        scope (`str`, defaults to `"global"`): `"global"` (one threshold: Network Slimming) or `"layer"`.
        round_to (`int`, *optional*): round each group's kept width up to a multiple of this (fewer removed),
            e.g. 8 for fast kernels.
        min_per_group (`int`, defaults to 1): channels every group keeps at least.

    Returns:
        `PruningPlan` with `channels` filled and the options in `meta`.

    Example:
        ```python
        >>> import torch, hfprune
        >>> plan = hfprune.select_channels({"a": torch.tensor([3.0, 1.0, 2.0, 0.5])}, ratio=0.5)
        >>> plan.channels
        {'a': [1, 3]}
        ```
    """
    _check(ratio, scope, round_to, min_per_group)
    units = {name: _units(scores, name) for name in scores}
    cap = {n: max(0, len(u) - math.ceil(min_per_group / g)) for n, (u, g) in units.items()}
    picked: dict[str, list[int]] = {}
    if scope == "layer":
        for name, (u, _) in units.items():
            n = min(math.floor(ratio * len(u) + 0.5), cap[name])
            picked[name] = sorted(u.argsort(stable=True)[:n].tolist())
    else:
        total = sum(len(u) * g for u, g in units.values())
        target = math.floor(ratio * total + 0.5)
        order = sorted(((float(u[i]), name, i) for name, (u, g) in units.items() for i in range(len(u))))
        removed = 0
        picked = {name: [] for name in units}
        for _, name, i in order:
            if removed >= target:
                break
            if len(picked[name]) < cap[name]:
                picked[name].append(i)
                removed += units[name][1]
    plan = {}
    for name, chosen in picked.items():
        u, g = units[name]
        chosen = _round_kept(u, chosen, g, round_to)
        if chosen:
            plan[name] = sorted(c * g + k for c in chosen for k in range(g))
    meta = {"selection": "channels", "ratio": ratio, "scope": scope, "round_to": round_to,
            "min_per_group": min_per_group, "criterion": getattr(scores, "criterion", None),
            # the scorer's model structure, or the scored groups' sizes (validate compares the groups it names)
            "model_structure": carried_structure(scores) or {"channels": {name: int(torch.as_tensor(scores[name])
                                                                                    .numel()) for name in scores}}}
    return PruningPlan(channels=plan, meta=meta)


def _round_kept(unit_scores: torch.Tensor, chosen: list[int], gran: int, round_to: int | None) -> list[int]:
    """Give back the best removed units until the kept width is a multiple of `round_to` (or nothing is removed)."""
    if not round_to or not chosen:
        return chosen
    chosen = sorted(chosen, key=lambda i: (float(unit_scores[i]), i))
    while chosen and ((len(unit_scores) - len(chosen)) * gran) % round_to:
        chosen.pop()  # the highest-scored removed unit stays after all
    return chosen
