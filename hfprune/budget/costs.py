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


def _shape(module: nn.Module) -> tuple[int, int]:
    """(in, out) of a Linear or transformers' Conv1D."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    return int(module.weight.shape[0]), int(module.weight.shape[1])


def _has_bias(module: nn.Module) -> int:
    return int(getattr(module, "bias", None) is not None)


def unit_costs(model: nn.Module, metric: str, seq_len: int) -> UnitCosts:
    """Per-layer cost of one head and one neuron in FLOPs (one sequence of `seq_len` tokens) or parameters."""
    from ..flops import model_costs

    adapter = get_adapter(model)
    head_dim = adapter.head_dim(model)
    heads, neurons = [], []
    for block in adapter.layers(model):
        n_heads = adapter.num_heads(model, block)
        # With grouped-query attention a KV head is shared; its cost counts as fixed (an upper bound).
        own_kv = not adapter.supports_gqa or adapter.num_kv_heads(model, block) == n_heads
        head = 0.0
        if n_heads:
            for seg in adapter.qkv_segments(block):
                if seg.role == "q" or own_kv:
                    fan_in = _shape(seg.module)[0]
                    head += 2 * seq_len * fan_in * head_dim if metric == "flops" else head_dim * (
                        fan_in + _has_bias(seg.module))
            out = adapter.out_proj(block)
            head += 2 * seq_len * head_dim * _shape(out)[1] if metric == "flops" else head_dim * _shape(out)[1]
            if metric == "flops":
                head += 4 * seq_len * seq_len * head_dim  # scores and weighted sum
        neuron = 0.0
        if adapter.intermediate_size(block):
            for module in adapter.ffn_in(block):
                fan_in = _shape(module)[0]
                neuron += 2 * seq_len * fan_in if metric == "flops" else fan_in + _has_bias(module)
            fan_out = _shape(adapter.ffn_out(block))[1]
            neuron += 2 * seq_len * fan_out if metric == "flops" else fan_out
        heads.append(float(head))
        neurons.append(float(neuron))
    dense = float(model_costs(model, seq_len=seq_len)[metric])
    return UnitCosts(metric, heads, neurons, dense)


def meta_copy(model: nn.Module) -> nn.Module:
    """An empty (meta-device) model with the same class and per-layer shapes as `model`: costs no memory."""
    from ..structure import get_record
    from ..surgery.core import apply_structure

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
    from ..surgery import prune

    clone = meta_copy(model)
    if not plan.is_empty():
        prune(clone, plan)
    return float(model_costs(clone, seq_len=seq_len)[metric])
