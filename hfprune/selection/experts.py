"""Selection of MoE experts: `{layer: scores}` -> `PruningPlan(experts=...)`, the lowest-scoring experts removed."""

from __future__ import annotations

import math

import torch

from ..importance.common import check_ratio
from ..plan import PruningPlan


def select_experts(scores: dict[int, torch.Tensor], ratio: float, uniform: bool = True,
                   min_keep: int = 1) -> PruningPlan:
    """Remove a share `ratio` of the experts, lowest scores first.

    Args:
        scores (`dict[int, torch.Tensor]`): MoE layer -> `[num_experts]` scores (`hfprune.expert_importance`).
        ratio (`float`): share of the experts to remove, in [0, 1] (rounded half up).
        uniform (`bool`): remove the same share in every layer (the same count where the layers have the same
            number of experts: the pruned model keeps a plain config); `False`: one ranking over all layers of the
            scores divided by their layer's mean (an average expert of any layer scores 1), so layers lose
            different counts (the structure then lives in the `hfprune` record; `load_pruned` loads it).
        min_keep (`int`): experts every layer keeps at least (pass the model's `num_experts_per_tok`: a plan
            keeping fewer is refused by `prune`).

    Returns:
        `PruningPlan` with `experts={layer: [index, ...]}`.
    """
    check_ratio("ratio", ratio)
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 1:
        raise ValueError(f"min_keep must be a positive integer, got {min_keep!r}")
    rows = {int(layer): torch.as_tensor(s, dtype=torch.float64).flatten() for layer, s in scores.items()}
    if uniform:
        drop = {}
        for layer, row in rows.items():
            count = min(math.floor(ratio * row.numel() + 0.5), max(row.numel() - min_keep, 0))
            drop[layer] = sorted(torch.argsort(row, stable=True)[:count].tolist())
        return PruningPlan(experts={k: v for k, v in drop.items() if v})
    total = math.floor(ratio * sum(r.numel() for r in rows.values()) + 0.5)
    ranked = sorted(((float(row[j] / row.mean().clamp(min=1e-30)), layer, j) for layer, row in rows.items()
                     for j in range(row.numel())))
    drop: dict[int, list[int]] = {layer: [] for layer in rows}
    for _, layer, j in ranked:
        if total <= 0:
            break
        if rows[layer].numel() - len(drop[layer]) > min_keep:
            drop[layer].append(j)
            total -= 1
    return PruningPlan(experts={k: sorted(v) for k, v in drop.items() if v})
