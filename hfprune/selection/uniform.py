"""Uniform structured selection for decoders: the same structure in every layer, so the result is a plain config.

Minitron (Muralidharan et al., 2024) prunes every layer to the same width, so the pruned model is described by the
family's own config (`num_attention_heads`, `num_key_value_heads`, `intermediate_size`) and loads with plain
`AutoModelForCausalLM.from_pretrained`. With grouped-query attention the KV heads must stay consistent: either whole
KV groups go (a multiple of the group size of query heads, each with its KV head: `group_mode="whole"`), or the
same number of query heads goes from every group (all KV heads stay, the group shrinks: `group_mode="even"`).
FFN widths are the same in every layer and rounded to a multiple of `round_to` (64 by default, for fast kernels).
"""

from __future__ import annotations

import math

import torch

GROUP_MODES = ("whole", "even")


def _round(x: float) -> int:
    return math.floor(x + 0.5)


def _valid(row: torch.Tensor) -> list[int]:
    return (~torch.isnan(row)).nonzero().flatten().tolist()


def _same_size(rows: list[torch.Tensor], what: str, caller: str) -> int:
    sizes = [len(_valid(r)) for r in rows]
    if len(set(sizes)) > 1:
        raise ValueError(f"{caller}: uniform=True needs the same number of {what} in every layer, got {sizes}")
    if not sizes or sizes[0] == 0:
        raise ValueError(f"{caller}: uniform=True: the scores hold no {what}")
    for i, row in enumerate(rows):
        if _valid(row) != list(range(sizes[0])):
            raise ValueError(f"{caller}: uniform=True: layer {i} has missing (NaN) {what} scores inside its range")
    return sizes[0]


def _lowest(values: list[float], n: int) -> list[int]:
    """Indices of the `n` lowest values (ties by index, so a selection is reproducible)."""
    return sorted(sorted(range(len(values)), key=lambda i: (values[i], i))[:n])


def uniform_heads(rows: list[torch.Tensor], num_kv_heads: list[int], *, ratio, count, group_mode: str,
                  min_per_layer: int) -> list[list[int]]:
    """Per layer, the query heads to remove, the same number everywhere and KV-consistent (see module docstring)."""
    caller = "select_heads"
    if group_mode not in GROUP_MODES:
        raise ValueError(f"{caller}: group_mode must be one of {GROUP_MODES}, got {group_mode!r}")
    heads = _same_size(rows, "heads", caller)
    if len(num_kv_heads) != len(rows):
        raise ValueError(f"{caller}: the scores cover {len(rows)} layers but the KV layout lists {len(num_kv_heads)}")
    if len(set(num_kv_heads)) > 1:
        raise ValueError(f"{caller}: uniform=True needs the same number of KV heads in every layer, got "
                         f"{num_kv_heads}")
    kv = num_kv_heads[0]
    if kv <= 0 or heads % kv:
        raise ValueError(f"{caller}: {heads} query heads cannot be split into {kv} KV groups")
    group = heads // kv
    if group_mode == "whole":
        unit, units = group, kv  # remove whole groups
    else:
        unit, units = kv, group  # remove the same count from each group
    if count is not None:
        if count % unit:
            what = "the KV group size" if group_mode == "whole" else "the number of KV groups"
            raise ValueError(f"{caller}: uniform=True, group_mode={group_mode!r}: count={count} heads per layer must "
                             f"be a multiple of {unit} ({what}: {heads} heads, {kv} KV heads)")
        steps = count // unit
    else:
        steps = _round(ratio * units)
    kept = (units - steps) * (group if group_mode == "whole" else kv)
    if steps > units - 1 or kept < min_per_layer:
        raise ValueError(f"{caller}: uniform=True, group_mode={group_mode!r}: removing {steps * unit} of {heads} "
                         f"heads per layer would leave {kept} (at least one KV group / one head per group and "
                         f"min_per_layer={min_per_layer} must stay)")
    picked = []
    for row in rows:
        scores = row.tolist()
        if group_mode == "whole":
            group_scores = [sum(scores[g * group:(g + 1) * group]) for g in range(kv)]
            drop = _lowest(group_scores, steps)
            picked.append([g * group + j for g in drop for j in range(group)])
        else:
            layer = []
            for g in range(kv):
                members = scores[g * group:(g + 1) * group]
                layer += [g * group + j for j in _lowest(members, steps)]
            picked.append(sorted(layer))
    return picked


def uniform_neurons(rows: list[torch.Tensor], *, ratio, count, round_to: int, min_per_layer: int) -> list[list[int]]:
    """Per layer, the FFN neurons to remove: the same number everywhere, the kept width a multiple of `round_to`."""
    size = _same_size(rows, "neurons", "select_neurons")
    removed = _round(ratio * size) if ratio is not None else count
    if removed > size:
        raise ValueError(f"select_neurons: cannot remove {removed} of {size} neurons per layer")
    kept = _round((size - removed) / round_to) * round_to
    floor = min(size, round_to * math.ceil(max(min_per_layer, 1) / round_to))
    kept = min(size, max(kept, floor))
    return [_lowest(row.tolist(), size - kept) for row in rows]


def contiguous_block(row: torch.Tensor, n: int) -> list[int]:
    """The `n` consecutive layers whose scores sum lowest (ties: the earliest block)."""
    values = row.double().tolist()
    best = min(range(len(values) - n + 1), key=lambda s: (sum(values[s:s + n]), s))
    return list(range(best, best + n))
