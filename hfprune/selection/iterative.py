"""Michel et al.'s iterative head pruning: mask a step of heads, re-score under the mask, repeat."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..arch import get_adapter, unwrap_model
from ..importance import head_importance
from ..importance.common import check_ratio
from ..masking import masked
from ..plan import PruningPlan
from ..structure import model_structure
from .per_layer import select_heads


def _round(x: float) -> int:
    return math.floor(x + 0.5)  # half up, as the selection itself counts


def _merge(plan: PruningPlan, heads: dict[int, list[int]]) -> PruningPlan:
    merged = {layer: sorted(set(plan.heads.get(layer, [])) | set(heads.get(layer, [])))
              for layer in set(plan.heads) | set(heads)}
    return PruningPlan(heads=merged, meta=dict(plan.meta))


def iterative_head_pruning(model: nn.Module, dataloader: Iterable, *, step_ratio: float = 0.1,
                           target_ratio: float | None = None, eval_fn: Callable[[nn.Module], float] | None = None,
                           min_metric_fraction: float | None = None, criterion: str = "michel",
                           min_per_layer: int = 1, on_step: Callable[[PruningPlan], None] | None = None,
                           **score_kwargs) -> PruningPlan:
    """Michel et al.'s iterative pruning: mask `step_ratio` of all heads, re-score under the mask, repeat.

    Michel et al. (2019), Section 4: heads are scored with the current mask in place, the least important
    `step_ratio` of the original head count are masked, and the loop goes on until `target_ratio` of the heads are
    masked or the metric falls below `min_metric_fraction` of the dense model's (then the last plan above the
    threshold is returned). The model is not changed; apply the plan with `hfprune.mask` or `hfprune.prune`.

    Args:
        model (`PreTrainedModel`): the model (not pruned by this function).
        dataloader (`DataLoader` or iterable of dicts): scoring batches, with labels.
        step_ratio (`float`, defaults to 0.1): fraction of the original heads masked per step, in (0, 1].
        target_ratio (`float`, *optional*): stop once this fraction of heads is masked.
        eval_fn (`Callable[[model], float]`, *optional*): a metric (higher is better) computed under the mask.
        min_metric_fraction (`float`, *optional*): stop before the metric drops below this fraction of the dense
            metric (needs `eval_fn`).
        criterion (`str`, defaults to `"michel"`): the head criterion re-run at each step.
        min_per_layer (`int`, defaults to 1): heads kept in every layer.
        on_step (`Callable[[PruningPlan], None]`, *optional*): called with the plan after each accepted step (e.g. to
            evaluate the intermediate ratios of one run).
        score_kwargs: passed to `head_importance` (`max_batches`, `num_samples`, `show_progress`, ...).

    Returns:
        `PruningPlan`: the heads to remove; `meta["iterative"]` lists (heads removed, metric) per step.

    Example:
        ```python
        >>> plan = hfprune.iterative_head_pruning(model, train_batches, target_ratio=0.5, max_batches=16)
        >>> hfprune.prune(model, plan)
        ```
    """

    if not isinstance(step_ratio, (int, float)) or isinstance(step_ratio, bool) or not 0 < step_ratio <= 1:
        raise ValueError(f"iterative_head_pruning: step_ratio must be in (0, 1], got {step_ratio!r}")
    check_ratio("iterative_head_pruning: target_ratio", target_ratio)
    check_ratio("iterative_head_pruning: min_metric_fraction", min_metric_fraction)
    if min_metric_fraction is not None and eval_fn is None:
        raise ValueError("iterative_head_pruning: min_metric_fraction needs eval_fn (the metric to watch)")
    if target_ratio is None and min_metric_fraction is None:
        raise ValueError("iterative_head_pruning: give target_ratio and/or min_metric_fraction, or it never stops")
    for key in ("plan", "return_entropy"):
        if key in score_kwargs:
            raise ValueError(f"iterative_head_pruning: {key}= is managed by the loop; do not pass it")
    model = unwrap_model(model)
    adapter = get_adapter(model)
    total = sum(adapter.num_heads(model, block) for block in adapter.layers(model))
    step = max(1, _round(step_ratio * total))
    target = _round(target_ratio * total) if target_ratio is not None else total
    dense = float(eval_fn(model)) if eval_fn is not None else None
    plan = PruningPlan()
    history = []
    while plan.num_heads() < target:
        scores = head_importance(model, dataloader, criterion=criterion, plan=plan, **score_kwargs)
        for layer, heads in plan.heads.items():
            scores[layer, heads] = float("nan")  # already masked: not candidates, not counted
        remaining = [int((~torch.isnan(row)).sum()) for row in scores]
        room = sum(max(0, n - min_per_layer) for n in remaining)
        n = min(step, target - plan.num_heads(), room)
        if n <= 0:
            break
        candidate = _merge(plan, select_heads(scores, count=n, min_per_layer=min_per_layer).heads)
        metric = None
        if eval_fn is not None:
            with masked(model, candidate):
                metric = float(eval_fn(model))
            if min_metric_fraction is not None and metric < min_metric_fraction * dense:
                break
        plan = candidate
        history.append({"removed": plan.num_heads(), "metric": metric})
        if on_step is not None:
            on_step(plan)
    plan.meta = {"iterative": {"criterion": criterion, "step_ratio": step_ratio, "target_ratio": target_ratio,
                               "min_metric_fraction": min_metric_fraction, "dense_metric": dense,
                               "steps": history},
                 "model_structure": model_structure(model)}
    return plan
