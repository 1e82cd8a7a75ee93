"""Non-uniform head selection for grouped-query attention: every KV group of a layer keeps the same number of heads.

With GQA each KV head serves a group of consecutive query heads. A plan that leaves the groups of one layer with
different sizes can only run on the stock attention code if KV heads are repeated (`units.heads.kv_layout`), which
makes the layer larger than before. So, without `uniform=True`, a GQA layer loses heads in *steps*: one step removes
the lowest-scoring remaining head of every group (its KV heads all stay, each group shrinks by one). A step's score
is the mean of the heads it removes; the steps of all layers are ranked together ("global") or counted per layer
("layer"). Every group keeps at least one head; removing whole KV groups is `uniform=True, group_mode="whole"`.
"""

from __future__ import annotations

import math

import torch

_UNIFORM_HINT = "uniform=True (--uniform) removes whole KV groups instead"


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def is_grouped(heads: list[int], kv_heads: list[int]) -> bool:
    """Whether every layer that has heads shares each KV head among several query heads (GQA / MQA)."""
    layers = [(h, kv) for h, kv in zip(heads, kv_heads) if h]
    return bool(layers) and len(heads) == len(kv_heads) and all(0 < kv < h for h, kv in layers)


def _layer_steps(row: torch.Tensor, kv: int, layer: int) -> tuple[int, list[list[int]], list[float]]:
    """(group size, the heads of each step in order, each step's score) of one layer."""
    heads = row.numel()
    if heads == 0:
        return 0, [], []
    if kv <= 0 or heads % kv or bool(torch.isnan(row).any()):
        raise ValueError(f"select_heads: layer {layer} has {heads} head scores (NaN = missing) that do not split into "
                         f"{kv} KV groups of equal size; {_UNIFORM_HINT}, or score the unpruned model")
    group = heads // kv
    # Lowest first inside each group (ties by index, so a selection is reproducible).
    ranked = [sorted(range(g * group, (g + 1) * group), key=lambda h: (float(row[h]), h)) for g in range(kv)]
    steps = [[ranked[g][k] for g in range(kv)] for k in range(group - 1)]  # one head per group must stay
    return group, steps, [float(row[s].mean()) for s in steps]


def grouped_heads(rows: list[torch.Tensor], kv_heads: list[int], *, ratio, count, scope: str,
                  min_per_layer: int) -> list[list[int]]:
    """Per layer, the query heads to remove so that every KV group keeps an equal count (see module docstring)."""
    if len(kv_heads) != len(rows):
        raise ValueError(f"select_heads: the scores cover {len(rows)} layers but the KV layout lists {len(kv_heads)}")
    layers = [_layer_steps(row, kv, i) for i, (row, kv) in enumerate(zip(rows, kv_heads))]
    # Steps a layer may take: one head per group stays, and min_per_layer heads stay.
    caps = [min(len(steps), max(0, (row.numel() - min_per_layer) // max(kv, 1)))
            for (_, steps, _), row, kv in zip(layers, rows, kv_heads)]
    if scope == "layer":
        taken = [_steps_in_layer(i, row.numel(), kv, cap, ratio, count)
                 for i, (row, kv, cap) in enumerate(zip(rows, kv_heads, caps))]
    else:
        taken = _steps_global(layers, kv_heads, caps, sum(r.numel() for r in rows), ratio, count)
    return [sorted(h for step in steps[:n] for h in step) for (_, steps, _), n in zip(layers, taken)]


def _steps_in_layer(layer: int, heads: int, kv: int, cap: int, ratio, count) -> int:
    if count is not None and count % kv:
        raise ValueError(f"select_heads: layer {layer} has {kv} KV groups; count={count} heads per layer must be a "
                         f"multiple of {kv} so every group keeps an equal count ({_UNIFORM_HINT})")
    n = _round(ratio * heads / kv) if ratio is not None else count // kv
    if n > cap:
        raise ValueError(f"select_heads: layer {layer}: removing {n * kv} of {heads} heads would leave a KV group "
                         f"empty or fewer than min_per_layer heads ({_UNIFORM_HINT})")
    return n


def _steps_global(layers, kv_heads: list[int], caps: list[int], total: int, ratio, count) -> list[int]:
    target = _round(ratio * total) if ratio is not None else count
    capacity = sum(cap * kv for cap, kv in zip(caps, kv_heads))
    if target > capacity:
        raise ValueError(f"select_heads: cannot remove {target} of {total} heads while every KV group keeps an equal "
                         f"count of at least one head (at most {capacity} can go; {_UNIFORM_HINT})")
    taken, removed = [0] * len(layers), 0
    while True:
        options = [(scores[taken[i]], i) for i, (_, _, scores) in enumerate(layers) if taken[i] < caps[i]]
        if not options:
            break
        _, layer = min(options)
        step = kv_heads[layer]
        if abs(removed + step - target) >= abs(removed - target):  # the step would not bring us closer
            break
        taken[layer] += 1
        removed += step
    return taken
