"""`prune_to_budget`: retraining-free structured pruning to a FLOPs, parameter or latency target.

Kwon et al. (2022), "A Fast Post-Training Pruning Framework for Transformers" (NeurIPS 2022): Fisher-based mask
search, mask rearrangement and mask tuning from a few thousand labelled samples, no retraining. Here on
Transformers v5 through hfprune's gates (no `head_mask`), for every family with heads and an FFN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn

from ..arch import get_adapter, unwrap_model
from ..masking import Gates, attach_gates
from ..passes import prepare_batches
from ..plan import PruningPlan
from ..structure import model_structure
from ..transaction import transaction
from .costs import UnitCosts, counted_cost, unit_costs
from .fisher import collect_mask_gradients
from .latency import LatencyTable, build_latency_table
from .rearrange import rearrange
from .search import minimum_cost, search_mask
from .tuning import fold_scales, scaled_weights, tune_scales


@dataclass
class BudgetMasks:
    """The outcome of the search before anything is applied: which units stay, and their tuned scales.

    Attributes:
        plan (`PruningPlan`): the units to remove (indexed as the model is now), with the budget in `plan.meta`.
        kept_heads, kept_neurons (`list[list[int]]`): per layer, the units kept.
        head_scales, neuron_scales (`dict[int, torch.Tensor]`): per tuned layer, the scales of the kept units (in
            the order of `kept_heads[layer]` / `kept_neurons[layer]`).
    """

    plan: PruningPlan
    kept_heads: list[list[int]]
    kept_neurons: list[list[int]]
    head_scales: dict[int, torch.Tensor] = field(default_factory=dict)
    neuron_scales: dict[int, torch.Tensor] = field(default_factory=dict)


def _check_budget(flops, params, latency) -> tuple[str, float]:
    given = {k: v for k, v in (("flops", flops), ("params", params), ("latency", latency)) if v is not None}
    if len(given) != 1:
        raise ValueError("prune_to_budget: give exactly one budget (flops=, params= or latency=), got "
                         + (", ".join(f"{k}={v!r}" for k, v in given.items()) or "none"))
    (metric, value), = given.items()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0.0 < value <= 1.0:
        raise ValueError(f"prune_to_budget: {metric}={value!r} must be a fraction of the dense model in (0, 1]")
    return metric, float(value)


def _check_positive(name: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"prune_to_budget: {name} must be a positive integer, got {value!r}")


def _refuse_gates(model: nn.Module) -> None:
    for module in model.modules():
        if any(getattr(h, "hfprune_gate", None) for h in module._forward_pre_hooks.values()):
            raise ValueError("prune_to_budget: the model still has hfprune gates attached (a mask / masked / "
                             "attach_gates handle); remove them first. Nothing was changed.")


def find_budget_masks(model: nn.Module, dataloader: Iterable, *, flops: float | None = None,
                      params: float | None = None, latency: float | None = None, seq_len: int = 128,
                      num_samples: int | None = 2048, tune: bool = True, show_progress: bool = True,
                      latency_table: LatencyTable | None = None) -> BudgetMasks:
    """Steps 1-4 of `prune_to_budget` without changing the model: masks and scales (see `prune_to_budget`).

    Args:
        latency_table (`LatencyTable`, *optional*): a table built before (`build_latency_table`), to reuse the timings
            of an earlier call or to plan for timings taken elsewhere; by default one is timed here.
    """
    metric, fraction = _check_budget(flops, params, latency)
    model = unwrap_model(model)  # DDP / accelerate / torch.compile: work on the model inside (statistics are gathered)
    _check_positive("seq_len", seq_len)
    _check_positive("num_samples", num_samples, allow_none=True)
    adapter = get_adapter(model)
    _refuse_gates(model)
    blocks = adapter.layers(model)
    dense_heads = [adapter.num_heads(model, b) for b in blocks]
    dense_neurons = [adapter.intermediate_size(b) for b in blocks]
    times: dict[str, float] = {}
    t_start = time.perf_counter()
    table = latency_table if metric == "latency" else None
    if metric != "latency":  # the cheap feasibility check comes before any data is read
        costs = unit_costs(model, metric, seq_len)
        _check_floor(costs, fraction, dense_heads, dense_neurons)
    t0 = time.perf_counter()
    batches = prepare_batches(model, dataloader, num_samples=num_samples, show_progress=show_progress)
    if metric == "latency":
        table = table or build_latency_table(model, batches[0], seq_len=seq_len)
        costs = table.unit_costs(len(blocks))
        _check_floor(costs, fraction, dense_heads, dense_neurons)
        times["latency_table"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    grads = collect_mask_gradients(model, batches, show_progress=show_progress)
    times["fisher"] = time.perf_counter() - t0

    def count(plan: PruningPlan, kept_h, kept_n) -> float:
        if table is not None:
            return table.estimate([len(k) for k in kept_h], [len(k) for k in kept_n], dense_heads, dense_neurons)
        return counted_cost(model, plan, metric, seq_len)

    target = fraction * costs.dense
    kept_h, kept_n, plan, achieved, search_s, rearrange_s = _search_and_rearrange(grads, costs, target, count)
    times["search"], times["rearrange"] = search_s, rearrange_s
    masks = BudgetMasks(plan, kept_h, kept_n)
    if tune and not plan.is_empty():
        t0 = time.perf_counter()
        gates = attach_gates(model, heads=True, neurons=True, plan=plan)
        modes = [(m, m.training) for m in model.modules()]
        model.eval()  # dropout off while the layer outputs are matched
        try:
            tuned = tune_scales(model, batches, gates, kept_h, kept_n, show_progress=show_progress)
        finally:
            gates.remove()
            for module, training in modes:
                module.training = training
        masks.head_scales, masks.neuron_scales = tuned.head_scales, tuned.neuron_scales
        times["tune"] = time.perf_counter() - t0
        plan.meta["tuning"] = {"layers_tuned": tuned.layers_tuned, "stopped_at": tuned.stopped_at}
    times["total"] = time.perf_counter() - t_start
    plan.meta.update({
        "model_structure": model_structure(model),  # the plan refuses any other structure
        "method": "kwon2022",
        "budget": {metric: fraction},
        "seq_len": seq_len,
        "num_batches": grads.num_batches,
        "num_samples": sum(int(next(v for v in b.values() if isinstance(v, torch.Tensor)).shape[0])
                           for b in batches),
        "estimated": {metric: achieved / costs.dense},
        "tuned": bool(tune),
        "time_s": times,
    })
    if table is not None:
        plan.meta["latency_table"] = {"dense_s": table.model, "estimated_s": achieved,
                                      "batch_shape": list(table.batch_shape)}
    return masks


def _check_floor(costs: UnitCosts, fraction: float, heads: list[int], neurons: list[int]) -> None:
    floor = minimum_cost(costs, heads, neurons)
    if fraction * costs.dense < floor:
        raise ValueError(
            f"prune_to_budget: a {costs.metric} budget of {fraction:g} cannot be met with at least one head and one "
            f"FFN neuron per layer (that minimum is {floor / costs.dense:.4f} of the dense model). Nothing was "
            "changed."
        )


def _search_and_rearrange(grads, costs: UnitCosts, target: float, count):
    """Search, rearrange and count exactly; if the count exceeds the target (e.g. grouped-query KV heads that the
    surgery has to repeat), bisect the search's own budget for the largest one whose exact count fits."""
    head_fisher, neuron_fisher = grads.head_fisher(), grads.neuron_fisher()
    clock = {"search": 0.0, "rearrange": 0.0}

    def attempt(internal: float):
        t0 = time.perf_counter()
        found = search_mask(head_fisher, neuron_fisher, costs, internal)
        t1 = time.perf_counter()
        kept_h, kept_n = rearrange(found.heads, grads.heads), rearrange(found.neurons, grads.neurons)
        clock["search"] += t1 - t0
        clock["rearrange"] += time.perf_counter() - t1
        plan = PruningPlan(
            heads={i: [h for h in range(g.shape[1]) if h not in set(k)] for i, (k, g) in enumerate(zip(kept_h,
                                                                                                     grads.heads))},
            neurons={i: [n for n in range(g.shape[1]) if n not in set(k)] for i, (k, g) in
                     enumerate(zip(kept_n, grads.neurons))},
        )
        return kept_h, kept_n, plan, count(plan, kept_h, kept_n)

    fits = lambda result: result[3] <= target * (1 + 1e-12)  # noqa: E731
    best = attempt(target)
    # The exact count is not monotone in the search's budget (which KV heads survive depends on the mask), so
    # step down one head's cost at a time first: the first fit is the closest to the target.
    step = max([*costs.head, *costs.neuron, 0.0])
    for k in range(1, 21):
        if fits(best) or step <= 0:
            break
        best = attempt(target - k * step)
    if not fits(best):
        lo = minimum_cost(costs, [g.shape[1] for g in grads.heads], [g.shape[1] for g in grads.neurons])
        hi, best = target, None
        for _ in range(12):
            mid = (lo + hi) / 2
            result = attempt(mid)
            if result[3] <= target * (1 + 1e-12):
                best, lo = result, mid
            else:
                hi = mid
        if best is None:
            raise ValueError(f"prune_to_budget: the {costs.metric} target of {target / costs.dense:.4f} of the dense "
                             "model cannot be met with at least one head and one FFN neuron per layer as counted "
                             "after surgery. Nothing was changed.")
    return (*best, clock["search"], clock["rearrange"])


def mask_with_scales(model: nn.Module, masks: BudgetMasks) -> Gates:
    """Attach gates that reproduce the searched model without changing weights: 0 on removed units, the tuned
    scale on kept ones. `.remove()` the handle to get the dense model back."""
    gates = attach_gates(model, heads=True, neurons=True, plan=masks.plan)
    for layer, scales in masks.head_scales.items():
        gates.head_gates[layer].data[masks.kept_heads[layer]] = scales.to(gates.head_gates[layer].device)
    for layer, scales in masks.neuron_scales.items():
        gates.neuron_gates[layer].data[masks.kept_neurons[layer]] = scales.to(gates.neuron_gates[layer].device)
    return gates


def apply_budget_masks(model: nn.Module, masks: BudgetMasks) -> PruningPlan:
    """Fold the scales into the output / down projections and remove the other units physically.

    Returns:
        `PruningPlan`: `masks.plan`, with the achieved FLOPs and parameters (fractions of the model before) in
        its meta.
    """
    from ..flops import model_costs
    from ..surgery import prune

    model = unwrap_model(model)
    plan = masks.plan
    plan.validate(model)
    _refuse_gates(model)
    seq_len = int(plan.meta.get("seq_len", 128))
    before = model_costs(model, seq_len=seq_len)
    t0 = time.perf_counter()
    with transaction(model) as snapshot:  # the folded scales and the surgery: all or nothing
        snapshot.keep(*scaled_weights(model, masks.head_scales, masks.neuron_scales))
        fold_scales(model, masks.head_scales, masks.neuron_scales, masks.kept_heads, masks.kept_neurons)
        if not plan.is_empty():
            prune(model, plan)
    after = model_costs(model, seq_len=seq_len)
    plan.meta.setdefault("time_s", {})["prune"] = time.perf_counter() - t0
    plan.meta["achieved"] = {"flops": after["flops"] / before["flops"], "params": after["params"] / before["params"]}
    if "latency_table" in plan.meta:
        plan.meta["achieved"]["latency"] = plan.meta["estimated"]["latency"]
    plan.meta["dense"] = {"flops": before["flops"], "params": before["params"]}
    plan.meta["pruned"] = {"flops": after["flops"], "params": after["params"]}
    return plan


def prune_to_budget(model: nn.Module, dataloader: Iterable, *, flops: float | None = None,
                    params: float | None = None, latency: float | None = None, seq_len: int = 128,
                    num_samples: int | None = 2048, tune: bool = True, show_progress: bool = True) -> PruningPlan:
    """Prune `model` in place, without retraining, to a fraction of its FLOPs, parameters or latency.

    Kwon et al. (2022), "A Fast Post-Training Pruning Framework for Transformers":
      1. Fisher information of every head and FFN-neuron mask from per-batch mask gradients (the model's own loss:
         the batches need `labels`; causal LMs get `labels = input_ids` when they have none).
      2. Mask search: for every number of kept heads, the best heads and then as many of the best neurons as the
         rest of the budget holds; the candidate keeping the most Fisher information wins.
      3. Mask rearrangement within each layer with the block-diagonal Fisher (the per-batch gradient vectors).
      4. Mask tuning (`tune=True`): per layer, least-squares scales of the kept heads and neurons so the layer's
         output matches the unpruned model's (stopping at a scale outside [-10, 10]), folded into the output /
         down projections.
    Then the other units are removed physically (`hfprune.prune`), so the model saves and reloads like any pruned
    model. At least one head and one neuron stay in every layer.

    The budget is a fraction of the dense model: FLOPs and parameters as `hfprune.flops.model_costs` counts them
    (FLOPs for one sequence of `seq_len` tokens; the plan is checked with that counter), latency from a per-layer
    table timed on the model's device. Under torch.distributed (each process with its own batches) the statistics
    are combined so that every process finds the plan of one process that saw all the batches.

    Args:
        model (`PreTrainedModel`): a model of a supported family, fine-tuned for its task.
        dataloader (`DataLoader` or iterable of dicts): calibration batches with labels (a few thousand samples).
        flops, params, latency (`float`): exactly one: the fraction of the dense model to keep, in (0, 1].
        seq_len (`int`, defaults to 128): sequence length at which FLOPs and latency are counted.
        num_samples (`int`, defaults to 2048): calibration samples read (per process); None: the whole loader.
        tune (`bool`, defaults to `True`): solve and fold the mask scales (step 4).
        show_progress (`bool`, defaults to `True`): progress bars.

    Returns:
        `PruningPlan`: what was removed (indexed as the model was), with `meta["budget"]`, `meta["achieved"]`
        (fractions of the dense FLOPs / params, and latency for a latency budget) and `meta["time_s"]` per step.

    Raises:
        ValueError: no budget or two, a budget outside (0, 1], a budget below one head and one neuron per layer,
            batches without labels (the model is unchanged then).

    Example:
        ```python
        >>> plan = hfprune.prune_to_budget(model, dataloader, flops=0.6, num_samples=2048)
        >>> plan.meta["achieved"]["flops"]  # <= 0.6
        ```
    """
    masks = find_budget_masks(model, dataloader, flops=flops, params=params, latency=latency, seq_len=seq_len,
                              num_samples=num_samples, tune=tune, show_progress=show_progress)
    return apply_budget_masks(model, masks)
