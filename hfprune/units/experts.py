"""MoE experts: index j along dim 0 of a layer's fused expert tensors and row j of its router.

The family adapter (`hfprune.arch.moe`) says where the router and the fused experts are and what the routing rule
is. The gate is a forward hook on the router that sets a removed expert's logit to -inf and re-derives the top-k
weights and indices with the family's rule: exp(-inf) = 0, so the softmax over all experts equals the softmax over
the kept ones, a removed expert never receives a token, and the kept ones get exactly the pruned model's weights.
A plan must leave at least `num_experts_per_tok` experts in each layer. A uniform structure (the same count in every
MoE layer) is said by the config's expert count; any other lives in the record (`load_pruned`).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from .base import UnitKind, check_per_layer, gated_error, new_gate, per_layer_entry, per_layer_json, set_if_valid

logger = logging.getLogger("hfprune")


def _router_hook(gate: torch.Tensor, adapter, renormalise: bool):
    def hook(module, args, output):
        off = gate.detach() == 0
        if not bool(off.any()):
            return output
        logits = output[0].masked_fill(off.to(output[0].device), float("-inf"))
        weights, indices = adapter.route(logits, module.top_k, renormalise)
        return (logits, weights, indices, *output[3:])

    hook.hfprune_gate = "experts"
    return hook


def _gated(router: nn.Module) -> bool:
    return any(getattr(h, "hfprune_gate", None) == "experts" for h in router._forward_hooks.values())


class Experts(UnitKind):
    name = "experts"
    noun = "MoE experts"
    order = 0
    structure_keys = ("experts",)

    def normalise(self, value):
        return per_layer_entry(self.name, value)

    def to_json(self, entry):
        return per_layer_json(entry)

    def validate(self, model, adapter, plan):
        layers = adapter.layers(model)
        for idx in plan.experts:
            if idx < len(layers) and not adapter.is_moe(layers[idx]):
                raise ValueError(f"PruningPlan.experts: layer {idx} is a dense MLP layer, it has no experts")
        check_per_layer(self.name, self.name, plan.experts, layers, adapter.num_experts)
        for idx, removed in plan.experts.items():
            block = layers[idx]
            total, top_k = adapter.num_experts(block), adapter.top_k(block)
            if total - len(removed) < top_k:
                raise ValueError(f"PruningPlan.experts: layer {idx} would keep {total - len(removed)} of {total} "
                                 f"experts, fewer than num_experts_per_tok={top_k} (each token is routed to "
                                 f"{top_k} experts)")

    def structure(self, model, adapter):
        return {"experts": [adapter.num_experts(block) for block in adapter.layers(model)]}

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        renormalise = adapter.renormalises(model.config)
        for idx, block in enumerate(adapter.layers(model)):
            if adapter.is_moe(block) and (which is True or idx in which):
                gate = new_gate(model, adapter.num_experts(block), plan.experts.get(idx, []) if plan else [],
                                requires_grad)
                hook = _router_hook(gate, adapter, renormalise)
                gates.add(self.name, idx, gate, adapter.router(block).register_forward_hook(hook))

    def check_removal(self, model, adapter, plan):
        layers = adapter.layers(model)
        for idx in plan.experts:
            if idx not in plan.layers and _gated(adapter.router(layers[idx])):
                raise gated_error(idx, self.name)

    def remove(self, model, adapter, plan):
        for idx, block in enumerate(adapter.layers(model)):
            removed = set(plan.experts.get(idx, []))
            if not removed or idx in plan.layers:
                continue
            total = adapter.num_experts(block)
            reshape_experts(adapter, block, [j for j in range(total) if j not in removed])
            logger.info("layer %d: experts %d -> %d", idx, total, total - len(removed))

    def write_config(self, model, adapter, structure, record, plan):
        counts = {n for n in structure["experts"] if n}
        updates = adapter.dense_layer_config(model.config, adapter.layers(model))
        if len(counts) == 1:
            count = counts.pop()
            updates[adapter.config_experts_key] = count
            if isinstance(getattr(model, "num_experts", None), int):
                model.num_experts = count  # the aux loss of <Family>ForCausalLM reads it
        if updates:
            set_if_valid(model.config, updates)

    def rebuild(self, model, adapter, record):
        for idx, (block, spec) in enumerate(zip(adapter.layers(model), record["layers"])):
            count = int(spec.get("experts", 0))
            if count != adapter.num_experts(block):
                if not adapter.is_moe(block) or count > adapter.num_experts(block):
                    raise ValueError(f"hfprune record keeps {count} experts in layer {idx}, but the config builds "
                                     f"{adapter.num_experts(block)} there")
                reshape_experts(adapter, block, list(range(count)))

    def config_says(self, config, adapter, record):
        counts = {int(s.get("experts", 0)) for s in record["layers"]} - {0}
        return not counts or counts == {int(getattr(config, adapter.config_experts_key))}


def reshape_experts(adapter, layer: nn.Module, keep: list[int]) -> None:
    """Keep experts `keep` (ascending) of one MoE layer, in place: router rows, fused tensors, run-time counts."""
    router, experts = adapter.router(layer), adapter.experts(layer)
    index = torch.tensor(keep, dtype=torch.long)
    with torch.no_grad():
        for module, names in ((router, ("weight", "bias")), (experts, adapter.expert_tensors)):
            for name in names:
                tensor = getattr(module, name, None)
                if tensor is None:
                    continue
                new = tensor.detach().index_select(0, index.to(tensor.device)).clone()
                setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
    adapter.set_expert_counts(layer, len(keep))
