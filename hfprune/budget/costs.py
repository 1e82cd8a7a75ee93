"""What one attention head and one FFN neuron cost, per layer, in FLOPs or parameters, from the live module shapes.

The budget is a fraction of the dense model's cost *as `hfprune.flops.model_costs` counts it*. The search needs the
cost per unit, which follows from the shapes: a query head owns `head_dim` output rows of the query (and, without
grouped-query attention, key and value) projections, `head_dim` input columns of the output projection and its
share of the attention products; a neuron owns one output row of each FFN input projection and one input column of
the down projection. Everything else (embeddings, norms, classifier, shared KV heads) is the fixed part, taken as
the dense count minus the units. The plan found this way is then counted exactly (on a meta-device copy, through
`model_costs`) and the search tightened if that count disagrees, so the budget holds for the counter itself.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..plan import PruningPlan

METRICS = ("flops", "params", "latency")


@dataclass
class UnitCosts:
    """Cost of each unit kind per layer, and the model's dense total, in one metric.

    Attributes:
        metric (`str`): "flops", "params" or "latency" (seconds).
        head (`list[float]`): layer -> cost of one head.
        neuron (`list[float]`): layer -> cost of one neuron.
        dense (`float`): the whole model's cost as it is now.
    """

    metric: str
    head: list[float]
    neuron: list[float]
    dense: float


def unit_costs(model: nn.Module, metric: str, seq_len: int) -> UnitCosts:
    """Per-layer cost of one head and one neuron in FLOPs (one sequence of `seq_len` tokens) or parameters.

    Read from hfprune's own counter: the per-layer counts of the model minus those of a meta-device copy with one
    head (a whole KV group for grouped-query attention) and one neuron fewer in every layer, so the costs are what
    `model_costs` will count (the sequence length it really uses, e.g. a ViT's patches). A layer with a single head
    or neuron needs no cost: that unit is never optional.
    """
    from ..flops import layer_costs, model_costs

    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    heads = [adapter.num_heads(model, b) for b in blocks]
    ffn = [adapter.intermediate_size(b) for b in blocks]
    base = [c[metric] for c in layer_costs(model, seq_len=seq_len)]

    def fewer(plan: PruningPlan) -> list[float]:
        return [float(c[metric]) for c in layer_costs(pruned_meta_copy(model, plan), seq_len=seq_len)]

    # Grouped-query attention: one query head alone never frees its KV head (and an uneven group makes the
    # surgery repeat KV heads), so the cost of a head is that of a whole group, shared by its query heads.
    group = [max(1, h // max(1, adapter.num_kv_heads(model, b))) for h, b in zip(heads, blocks)]
    one_group = fewer(PruningPlan(heads={i: list(range(g)) for i, (h, g) in enumerate(zip(heads, group)) if h > g}))
    one_neuron = fewer(PruningPlan(neurons={i: [0] for i, n in enumerate(ffn) if n > 1}))
    head = [float(b - a) / g if h > g else 0.0 for b, a, h, g in zip(base, one_group, heads, group)]
    neuron = [float(b - a) if n > 1 else 0.0 for b, a, n in zip(base, one_neuron, ffn)]
    dense = float(model_costs(model, seq_len=seq_len)[metric])
    return UnitCosts(metric, head, neuron, dense)


def meta_copy(model: nn.Module) -> nn.Module:
    """An empty (meta-device) model with the same class and per-layer shapes as `model`: costs no memory."""
    from ..structure import apply_structure, get_record

    config = copy.deepcopy(model.config)
    with torch.device("meta"):
        clone = type(model)(config)
    record = get_record(config)
    if record is not None:
        apply_structure(clone, record)
    return clone


def counted_cost(model: nn.Module, plan: PruningPlan, metric: str, seq_len: int) -> float:
    """The exact `model_costs` count of `model` after `plan`, computed on a meta copy (the model is untouched)."""
    from ..flops import model_costs

    return float(model_costs(pruned_meta_copy(model, plan), seq_len=seq_len)[metric])


def pruned_meta_copy(model: nn.Module, plan: PruningPlan) -> nn.Module:
    """`meta_copy(model)` with `plan` applied (shapes only, no memory; the model is untouched)."""
    from ..surgery import apply_plan

    clone = meta_copy(model)
    if not plan.is_empty():
        apply_plan(clone, plan)
    return clone
