"""Attention heads: `head_dim` output rows of q, k and v and as many input columns of o, per layer.

The adapter (`hfprune.arch.transformer`) says where q/k/v/o are (fused projections as offsets) and how many heads a
layer has now. The gate multiplies each head's context at the input of o, so a masked head contributes exactly
what a removed one does (nothing; o's bias stays). For grouped-query attention a KV head goes once every query head
of its group is gone (`kv_layout`).
"""

from __future__ import annotations

import logging
from math import gcd

import torch
from torch import nn

from ..arch.base import set_submodule
from .base import (
    UnitKind,
    bias_site,
    check_per_layer,
    gated_error,
    has_gate,
    module_names,
    new_gate,
    per_layer_entry,
    per_layer_json,
    set_if_valid,
)
from .headless import HeadlessAttention
from .slicing import head_rows, select_inputs, select_outputs, zero_width_safe

logger = logging.getLogger("hfprune")


def _head_hook(gate: torch.Tensor, head_dim: int):
    def hook(module, args):
        x = args[0]
        g = gate.to(dtype=x.dtype, device=x.device)
        x = (x.unflatten(-1, (-1, head_dim)) * g.unsqueeze(-1)).flatten(-2)
        return (x, *args[1:])

    hook.hfprune_gate = "heads"  # lets prune() refuse to resize a projection that still carries a gate
    return hook


class Heads(UnitKind):
    name = "heads"
    noun = "attention heads"
    order = 0
    listed_when_empty = True
    compensable = True
    structure_keys = ("heads", "kv_heads")

    def normalise(self, value):
        return per_layer_entry(self.name, value)

    def to_json(self, entry):
        return per_layer_json(entry)

    def validate(self, model, adapter, plan):
        check_per_layer(self.name, self.name, plan.heads, adapter.layers(model),
                        lambda block: adapter.num_heads(model, block))

    def structure(self, model, adapter):
        layers = adapter.layers(model)
        return {"heads": [adapter.num_heads(model, blk) for blk in layers],
                "kv_heads": [adapter.num_kv_heads(model, blk) for blk in layers]}

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        head_dim = adapter.head_dim(model)
        for idx, block in enumerate(adapter.layers(model)):
            n = adapter.num_heads(model, block)
            if n > 0 and (which is True or idx in which):
                gate = new_gate(model, n, plan.heads.get(idx, []) if plan else [], requires_grad)
                gates.add(self.name, idx, gate, adapter.out_proj(block).register_forward_pre_hook(
                    _head_hook(gate, head_dim)))

    def check_removal(self, model, adapter, plan):
        layers = adapter.layers(model)
        for idx in plan.heads:
            if idx not in plan.layers and has_gate(adapter.out_proj(layers[idx]), self.name):
                raise gated_error(idx, self.name)

    def remove(self, model, adapter, plan):
        for idx, block in enumerate(adapter.layers(model)):
            removed = set(plan.heads.get(idx, []))
            if not removed or idx in plan.layers:
                continue
            n_heads, n_kv = adapter.num_heads(model, block), adapter.num_kv_heads(model, block)
            keep = [h for h in range(n_heads) if h not in removed]
            kv_keep = kv_layout(n_heads, n_kv, keep)[0] if adapter.supports_gqa else None
            reshape_attention(model, adapter, block, keep, kv_keep)
            logger.info("layer %d: attention heads %d -> %d", idx, n_heads, len(keep))

    def write_config(self, model, adapter, structure, record, plan):
        heads, kv = set(structure["heads"]), set(structure["kv_heads"])
        if adapter.config_heads_key and len(heads) == 1 and len(kv) == 1 and 0 not in heads:
            # The head size must stay what it is when the head count changes, so write it down explicitly.
            updates = {"head_dim": adapter.head_dim(model), adapter.config_heads_key: heads.pop()}
            if adapter.config_kv_heads_key:
                updates[adapter.config_kv_heads_key] = kv.pop()
            set_if_valid(model.config, updates)

    def rebuild(self, model, adapter, record):
        for block, spec in zip(adapter.layers(model), record["layers"]):
            heads, kv = int(spec["heads"]), int(spec["kv_heads"])
            if (heads, kv) != (adapter.num_heads(model, block), adapter.num_kv_heads(model, block)):
                base_kv = adapter.num_kv_heads(model, block)
                reshape_attention(model, adapter, block, list(range(heads)), [i % base_kv for i in range(kv)])

    def compensation_sites(self, model, adapter, plan):
        sites, flags, names = {}, set(), module_names(model)
        blocks, head_dim = adapter.layers(model), adapter.head_dim(model)
        for idx, removed in plan.heads.items():
            if idx not in plan.layers:
                out_proj = adapter.out_proj(blocks[idx])
                indicator = torch.zeros(adapter.num_heads(model, blocks[idx]) * head_dim)
                indicator[head_rows(removed, head_dim)] = 1.0
                bias_site(model, adapter, out_proj, indicator, sites, flags, names)
        return sites, flags

    def config_says(self, config, adapter, record):
        heads = {s["heads"] for s in record["layers"]}
        kv = {s["kv_heads"] for s in record["layers"]}
        return heads == {adapter.base_num_heads(config)} and kv == {adapter.base_num_kv_heads(config)}


def kv_layout(num_heads: int, num_kv_heads: int, keep: list[int]) -> tuple[list[int], int]:
    """KV heads to keep (with repeats) and the new group size, for the kept query heads `keep`.

    A KV head goes when its whole group of query heads goes. When the surviving groups have unequal sizes, each KV
    head is repeated so that every group has the same size g = gcd(sizes): exact, and expressible by the stock
    `num_key_value_groups` attention code.
    """
    group = num_heads // num_kv_heads
    counts: dict[int, int] = {}
    for h in keep:
        counts[h // group] = counts.get(h // group, 0) + 1
    if not counts:
        return [], 1
    new_group = 0
    for c in counts.values():
        new_group = gcd(new_group, c)
    kv = [g for g in sorted(counts) for _ in range(counts[g] // new_group)]
    return kv, new_group


def reshape_attention(model: nn.Module, adapter, layer: nn.Module, keep: list[int],
                      kv_keep: list[int] | None = None) -> None:
    """Keep query heads `keep` (and KV heads `kv_keep`, repeats allowed) of one layer, in place.

    Also used by `load_pruned` with placeholder indices, purely to give modules their saved shapes.
    """
    head_dim = adapter.head_dim(model)
    if kv_keep is None:
        kv_keep = keep
    out_proj = adapter.out_proj(layer)
    # Fused projections (GPT-2) hold q, k and v in one module: gather all their rows in one pass.
    rows_by_module: dict[int, tuple[nn.Module, list[torch.Tensor]]] = {}
    for seg in adapter.qkv_segments(layer):
        rows = head_rows(keep if seg.role == "q" else kv_keep, head_dim, seg.offset)
        rows_by_module.setdefault(id(seg.module), (seg.module, []))[1].append(rows)
    for module, rows in rows_by_module.values():
        select_outputs(module, torch.cat(rows))
    select_inputs(out_proj, head_rows(keep, head_dim))
    if not keep:
        out_proj = zero_width_safe(out_proj)
        set_submodule(layer, adapter.o_path, out_proj)

    attention = adapter.attention(layer)
    if keep:
        adapter.set_attention_attrs(attention, len(keep), len(kv_keep), head_dim)
        return
    if isinstance(attention, HeadlessAttention):
        return
    # No head left: the stock forward cannot view an empty projection as (-1, head_dim), so swap in a stand-in.
    out_name = None
    if adapter.headless_owns_output:
        out_name = adapter.o_path[len(adapter.attention_path) + 1:] if adapter.attention_path else adapter.o_path
    headless = HeadlessAttention(
        head_dim,
        layer_idx=getattr(attention, "layer_idx", None),
        out_proj=out_proj if adapter.headless_owns_output else None,
        out_proj_name=out_name,
    )
    set_submodule(layer, adapter.attention_path, headless)
