"""Selection per layer: head, neuron and layer scores -> `PruningPlan`.

Units with the lowest scores are removed, by ratio or by count, over the whole model ("global") or within each
layer ("layer"), keeping at least `min_per_layer` units in every layer. NaN scores mark units that do not exist
(a layer with fewer heads after earlier pruning) or are already masked; they are never selected and do not count
towards the total a ratio applies to.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..importance.common import ImportanceResult, carried_structure, check_ratio
from ..plan import PruningPlan
from ..ranking import SCOPES
from ..structure import model_structure
from .kv_groups import grouped_heads, is_grouped
from .uniform import contiguous_block, uniform_heads, uniform_neurons


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up: round() rounds 2.5 to 2


def _as_rows(scores, what: str) -> list[torch.Tensor]:
    if isinstance(scores, ImportanceResult):
        scores = scores.scores
    if isinstance(scores, torch.Tensor):
        if scores.dim() == 1 and what == "layers":
            return [scores.detach().float().cpu()]
        if scores.dim() != 2:
            raise ValueError(f"{what} scores must be a [num_layers, units] tensor or a list of per-layer tensors, "
                             f"got shape {tuple(scores.shape)}")
        return [row.detach().float().cpu() for row in scores]
    if isinstance(scores, Sequence) and not isinstance(scores, (str, bytes)):
        rows = []
        for i, row in enumerate(scores):
            row = torch.as_tensor(row).detach().float().cpu()
            if row.dim() != 1:
                raise ValueError(f"{what} scores: layer {i} has shape {tuple(row.shape)}, expected a vector")
            rows.append(row)
        return rows
    raise TypeError(f"{what} scores must be a tensor or a list of tensors, got {type(scores).__name__}")


def _check_amount(ratio, count, what: str) -> None:
    if (ratio is None) == (count is None):
        raise ValueError(f"select_{what}: give exactly one of ratio= or count=")
    check_ratio(f"select_{what}: ratio", ratio)
    if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
        raise ValueError(f"select_{what}: count must be a non-negative integer, got {count!r}")


def _lowest(rows: list[torch.Tensor], ratio, count, scope: str, min_per_layer: int, what: str) -> list[list[int]]:
    """Per layer, the indices of the units to remove (lowest scores first)."""
    _check_amount(ratio, count, what)
    if scope not in SCOPES:
        raise ValueError(f"select_{what}: scope must be one of {SCOPES}, got {scope!r}")
    if isinstance(min_per_layer, bool) or not isinstance(min_per_layer, int) or min_per_layer < 0:
        raise ValueError(f"select_{what}: min_per_layer must be a non-negative integer, got {min_per_layer!r}")
    valid = [(~torch.isnan(row)).nonzero().flatten().tolist() for row in rows]
    capacity = [max(0, len(v) - min_per_layer) for v in valid]
    # Ties break by layer, then index, so a selection is reproducible.
    order = [sorted(v, key=lambda i, row=row: (float(row[i]), i)) for row, v in zip(rows, valid)]
    if scope == "layer":
        picked = []
        for layer, (v, cap) in enumerate(zip(valid, capacity)):
            n = _round(ratio * len(v)) if ratio is not None else count
            if n > cap:
                raise ValueError(
                    f"select_{what}: layer {layer} has {len(v)} {what}; removing {n} would leave fewer than "
                    f"min_per_layer={min_per_layer}"
                )
            picked.append(sorted(order[layer][:n]))
        return picked
    total = sum(len(v) for v in valid)
    n = _round(ratio * total) if ratio is not None else count
    if n > sum(capacity):
        raise ValueError(
            f"select_{what}: cannot remove {n} of {total} {what} while keeping min_per_layer={min_per_layer} in each "
            f"of {len(rows)} layers (at most {sum(capacity)} can go)"
        )
    ranked = sorted(((float(row[i]), layer, i) for layer, (row, v) in enumerate(zip(rows, valid)) for i in v))
    picked = [[] for _ in rows]
    for _, layer, i in ranked:
        if n == 0:
            break
        if len(picked[layer]) < capacity[layer]:
            picked[layer].append(i)
            n -= 1
    return [sorted(p) for p in picked]


def _meta(what: str, **options) -> dict:
    return {"selection": {"units": what, **{k: v for k, v in options.items() if v is not None}}}


def plan_structure(scores, rows: list[torch.Tensor], model: nn.Module | None = None) -> dict:
    """The structure a selected plan is made for (its `meta["model_structure"]`): the model's when given, else the
    one the scorer attached to `scores`, else what bare scores imply (their number of layers; `PruningPlan.validate`
    compares only the keys a structure has)."""
    if model is not None:
        return model_structure(model)
    return carried_structure(scores) or {"num_layers": len(rows)}


def select_heads(scores, *, ratio: float | None = None, count: int | None = None, scope: str = "global",
                 min_per_layer: int = 1, model: nn.Module | None = None, uniform: bool = False,
                 group_mode: str = "whole", num_kv_heads: int | list[int] | None = None) -> PruningPlan:
    """Remove the attention heads with the lowest importance.

    Michel et al. (2019) prune globally by normalised importance; per-layer selection is the alternative they
    compare against. `uniform=True` removes the same number of query heads in every layer, consistently with the
    KV heads (Minitron, Muralidharan et al. 2024), so a pruned decoder has a plain config (see
    `hfprune.selection.uniform`).

    Args:
        scores (`torch.Tensor` `[num_layers, max_heads]`, `ImportanceResult` or list of vectors): NaN = no such head.
        ratio (`float`, *optional*): fraction of the existing heads to remove, in [0, 1].
        count (`int`, *optional*): number of heads to remove (per layer when `scope="layer"`).
        scope (`str`, defaults to `"global"`): "global" ranks all heads together, "layer" within each layer.
        min_per_layer (`int`, defaults to 1): heads kept in every layer (0 lets a layer lose all its heads).
        model (`PreTrainedModel`, *optional*): check the scores' shape against it and record its structure in the
            plan, so the plan refuses to apply to a different model. With `uniform=True` it also gives the KV layout.
        uniform (`bool`, defaults to `False`): the same number of heads removed in every layer (`scope` is then
            per layer; `count` is per layer; the scores must cover the same number of heads in every layer).
        group_mode (`str`, defaults to `"whole"`): with `uniform=True` and grouped-query attention: "whole" removes
            whole KV groups (query heads in multiples of the group size, each group's KV head with it; `ratio` is
            rounded to whole groups), "even" removes the same number of query heads from every group (KV heads stay).
        num_kv_heads (`int` or `list[int]`, *optional*): the KV heads per layer, when `model` is not given
            (default: as many as query heads, i.e. no GQA).

    Grouped-query attention never makes a model larger: without `uniform=True`, when `model` (or `num_kv_heads`)
    shows KV groups of more than one query head, heads go in steps of one head from every KV group of a layer, so
    each group keeps an equal count and no KV head has to be repeated (`hfprune.selection.kv_groups`); an amount
    that cannot be met that way (a count per layer that is not a multiple of the KV heads, a group that would be
    emptied) is refused with a message pointing to `uniform=True`, which removes whole KV groups.

    Returns:
        `PruningPlan` with `heads` set.

    Example:
        ```python
        >>> plan = hfprune.select_heads(torch.tensor([[0.9, 0.1], [0.5, 0.2]]), count=1)
        >>> plan.heads
        {0: [1]}
        ```
    """
    rows = _as_rows(scores, "heads")
    meta = _meta("heads", ratio=ratio, count=count, scope=scope, min_per_layer=min_per_layer,
                 uniform=uniform or None, group_mode=group_mode if uniform else None)
    structure = plan_structure(scores, rows, model)
    if model is not None:
        have = [int((~torch.isnan(r)).sum()) for r in rows]
        if have != structure["heads"]:
            raise ValueError(f"select_heads: scores cover heads per layer {have}, but the model has "
                             f"{structure['heads']}; were the scores computed on this model?")
    meta["model_structure"] = structure
    if uniform:
        _check_amount(ratio, count, "heads")
        if "kv_heads" in structure:
            kv = structure["kv_heads"]
        elif num_kv_heads is None:
            kv = [int((~torch.isnan(r)).sum()) for r in rows]
        else:
            kv = [num_kv_heads] * len(rows) if isinstance(num_kv_heads, int) else list(num_kv_heads)
        picked = uniform_heads(rows, kv, ratio=ratio, count=count, group_mode=group_mode,
                               min_per_layer=min_per_layer)
    else:
        kv = (structure or {}).get("kv_heads", num_kv_heads)
        if isinstance(kv, int):
            kv = [kv] * len(rows)
        if kv is not None and is_grouped([int((~torch.isnan(r)).sum()) for r in rows], kv):
            _check_amount(ratio, count, "heads")
            if scope not in SCOPES:
                raise ValueError(f"select_heads: scope must be one of {SCOPES}, got {scope!r}")
            trimmed = [r[:int((~torch.isnan(r)).sum())] for r in rows]
            picked = grouped_heads(trimmed, list(kv), ratio=ratio, count=count, scope=scope,
                                   min_per_layer=min_per_layer)
            meta["selection"]["kv_groups"] = "equal"
        else:
            picked = _lowest(rows, ratio, count, scope, min_per_layer, "heads")
    return PruningPlan(heads={i: p for i, p in enumerate(picked) if p}, meta=meta)


def _round_kept(size: int, removed: int, round_to: int, min_keep: int) -> int:
    """How many to remove so that the kept width is the nearest multiple of `round_to` (never below `min_keep`)."""
    if size == 0:
        return 0
    kept = _round((size - removed) / round_to) * round_to
    floor = min(size, round_to * math.ceil(max(min_keep, 1) / round_to))
    return size - min(size, max(kept, floor))


def select_neurons(scores, *, ratio: float | None = None, count: int | None = None, scope: str = "global",
                   min_per_layer: int = 1, round_to: int | None = None, uniform: bool = False) -> PruningPlan:
    """Remove the FFN neurons with the lowest importance.

    Args:
        scores (`list[torch.Tensor]` or `torch.Tensor` `[num_layers, intermediate]`): per-layer neuron scores.
        ratio (`float`, *optional*): fraction of the neurons to remove, in [0, 1].
        count (`int`, *optional*): number of neurons to remove (per layer when `scope="layer"`).
        scope (`str`, defaults to `"global"`): "global" or "layer".
        min_per_layer (`int`, defaults to 1): neurons kept in every layer.
        round_to (`int`, *optional*): make every kept FFN width a multiple of this (e.g. 8 or 64, for fast kernels);
            each layer's kept width goes to the nearest multiple, so the removed total is close to, not exactly,
            what `ratio` / `count` asks. With `uniform=True` it defaults to 64 (`round_to=1`: no rounding).
        uniform (`bool`, defaults to `False`): the same FFN width kept in every layer (Minitron), so a decoder's
            config can say it; `count` is per layer; every layer must have the same width now.

    Returns:
        `PruningPlan` with `neurons` set.

    Example:
        ```python
        >>> scores = hfprune.neuron_importance(model, dataloader, criterion="taylor")
        >>> plan = hfprune.select_neurons(scores, ratio=0.5, round_to=8)
        ```
    """
    if round_to is not None and (isinstance(round_to, bool) or not isinstance(round_to, int) or round_to <= 0):
        raise ValueError(f"select_neurons: round_to must be a positive integer, got {round_to!r}")
    rows = _as_rows(scores, "neurons")
    if uniform:
        _check_amount(ratio, count, "neurons")
        round_to = 64 if round_to is None else round_to
        picked = uniform_neurons(rows, ratio=ratio, count=count, round_to=round_to, min_per_layer=min_per_layer)
        meta = _meta("neurons", ratio=ratio, count=count, min_per_layer=min_per_layer, round_to=round_to,
                     uniform=True)
        meta["model_structure"] = plan_structure(scores, rows)
        return PruningPlan(neurons={i: p for i, p in enumerate(picked) if p}, meta=meta)
    picked = _lowest(rows, ratio, count, scope, min_per_layer, "neurons")
    if round_to is not None:
        for layer, row in enumerate(rows):
            valid = (~torch.isnan(row)).nonzero().flatten().tolist()
            n = _round_kept(len(valid), len(picked[layer]), round_to, min_per_layer)
            picked[layer] = sorted(sorted(valid, key=lambda i, row=row: (float(row[i]), i))[:n])
    meta = _meta("neurons", ratio=ratio, count=count, scope=scope, min_per_layer=min_per_layer, round_to=round_to)
    meta["model_structure"] = plan_structure(scores, rows)
    return PruningPlan(neurons={i: p for i, p in enumerate(picked) if p}, meta=meta)


def select_layers(scores, *, count: int | None = None, ratio: float | None = None,
                  contiguous: bool = False) -> PruningPlan:
    """Remove the whole blocks with the lowest importance (from `layer_importance`; higher = more important).

    Args:
        scores (`torch.Tensor` `[num_layers]`): layer scores.
        count (`int`, *optional*): number of layers to remove.
        ratio (`float`, *optional*): fraction of the layers to remove, in [0, 1] (rounded half up).
        contiguous (`bool`, defaults to `False`): remove one block of consecutive layers, the one whose scores sum
            lowest (Gromov et al. 2024; with `layer_importance(method="angular", n=count)` that is the block whose
            input and output are closest in angle).

    Returns:
        `PruningPlan` with `layers` set.

    Example:
        ```python
        >>> hfprune.select_layers(torch.tensor([0.3, 0.01, 0.2, 0.05]), count=2).layers
        [1, 3]
        ```
    """
    _check_amount(ratio, count, "layers")
    rows = _as_rows(scores, "layers")
    if len(rows) != 1:
        raise ValueError(f"select_layers: scores must be a [num_layers] vector, got {len(rows)} rows")
    row = rows[0]
    if torch.isnan(row).any():
        raise ValueError(f"select_layers: scores contain NaN at layers {torch.isnan(row).nonzero().flatten().tolist()}")
    n_layers = row.numel()
    n = _round(ratio * n_layers) if ratio is not None else count
    if n >= n_layers:
        raise ValueError(f"select_layers: cannot remove {n} of {n_layers} layers (at least one must stay)")
    meta = _meta("layers", ratio=ratio, count=count, contiguous=contiguous or None)
    meta["model_structure"] = carried_structure(scores) or {"num_layers": n_layers}
    if contiguous:
        return PruningPlan(layers=contiguous_block(row, n) if n else [], meta=meta)
    order = sorted(range(n_layers), key=lambda i: (float(row[i]), i))
    return PruningPlan(layers=sorted(order[:n]), meta=meta)
