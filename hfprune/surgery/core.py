"""Physical removal of heads, FFN neurons and layers: weights and `model.config` change together."""

from __future__ import annotations

import logging
from math import gcd

import torch
from torch import nn

from ..arch import ArchAdapter, get_adapter, unwrap_model
from ..arch.base import get_submodule, set_submodule
from ..plan import PruningPlan
from ..structure import sync_config
from .headless import HeadlessAttention
from .slicing import head_rows, select_inputs, select_outputs, zero_width_safe

logger = logging.getLogger("hfprune")


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


def reshape_attention(model: nn.Module, adapter: ArchAdapter, layer: nn.Module, keep: list[int],
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


def reshape_ffn(adapter: ArchAdapter, layer: nn.Module, keep: list[int]) -> None:
    """Keep FFN neurons `keep` of one layer, in place (an FFN with none left adds only its output bias)."""
    index = torch.tensor(keep, dtype=torch.long)
    for module in adapter.ffn_in(layer):
        select_outputs(module, index)
    select_inputs(adapter.ffn_out(layer), index)
    if not keep:
        set_submodule(layer, adapter.ffn_out_path, zero_width_safe(adapter.ffn_out(layer)))
    adapter.set_ffn_attrs(layer, len(keep))


def remove_layers(model: nn.Module, adapter: ArchAdapter, drop: list[int]) -> None:
    """Drop whole blocks and re-number what the cache and masks read (`layer_idx`, `config.layer_types`)."""
    if not drop:
        return
    layers = adapter.layers(model)
    kept = [i for i in range(len(layers)) if i not in set(drop)]
    new_list = nn.ModuleList([layers[i] for i in kept])
    for new_idx, block in enumerate(new_list):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    adapter.set_layers(model, new_list)
    parent = get_submodule(model, adapter.layers_path(model).rpartition(".")[0])
    for name in ("n_layers", "num_layers", "num_hidden_layers"):
        if isinstance(getattr(parent, name, None), int):
            setattr(parent, name, len(kept))
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        model.config.layer_types = [layer_types[i] for i in kept]
    model.config.num_hidden_layers = len(kept)


def prune(model: nn.Module, plan: PruningPlan, compensate=None) -> nn.Module:
    """Physically remove the heads, FFN neurons and layers of `plan` from `model`, in place.

    Weights and biases of the q/k/v/o (or fused qkv) and FFN projections are sliced, removed layers are dropped and
    re-indexed, and `model.config` records the new per-layer structure (`config.hfprune`), so that
    `model.save_pretrained()` followed by `hfprune.load_pruned()` gives the same model back. Calls compose: a second
    plan is indexed against the already-pruned model.

    For grouped-query attention a KV head is removed once every query head of its group is removed.

    Args:
        model (`PreTrainedModel`): a model of a supported family; a DDP / accelerate / compiled wrapper is unwrapped
            (the wrapper holds the old parameters afterwards: wrap the returned model again, e.g.
            `accelerator.prepare(model)`).
        plan (`PruningPlan`): units to remove, indexed as the model is now.
        compensate (`Iterable[dict]` or `ChannelCompensation`, *optional*): CNN channel plans only: calibration
            batches (`pixel_values`) or a measured `hfprune.channel_compensation`; each removed channel's mean
            contribution is folded into its consumers' biases / BatchNorm running means (see `docs/channels.md`).

    Returns:
        The same `model` object (the model inside the wrapper, when given one), pruned.

    Raises:
        ValueError: the plan does not fit the model (nothing is changed then).

    Example:
        ```python
        >>> import hfprune
        >>> hfprune.prune(model, hfprune.PruningPlan(heads={0: [0, 2]}, neurons={1: list(range(32))}, layers=[3]))
        ```
    """
    model = unwrap_model(model)
    adapter = get_adapter(model)
    if plan.channels or getattr(adapter, "has_channels", False):  # CNN channel groups
        from .channels import prune_channels

        return prune_channels(model, plan, compensate=compensate)
    if compensate is not None:  # refused for a plan without channels, with the message of every compensate=
        from ..compensation import resolve_compensation

        resolve_compensation(model, plan, compensate)
    plan.validate(model)  # before any change: a bad plan leaves the model untouched
    n_layers = len(adapter.layers(model))
    if plan.layers and len(plan.layers) >= n_layers:  # masking them all is a fine "what if"; removing them is not
        raise ValueError(f"PruningPlan.layers removes all {n_layers} layers; at least one must stay")
    _refuse_attached_gates(model, adapter, plan)
    sync_config(model, adapter, plan=None)  # make sure a record of the structure *before* this plan exists
    layers = adapter.layers(model)
    for idx, block in enumerate(layers):
        removed_heads = set(plan.heads.get(idx, []))
        if removed_heads and idx not in plan.layers:
            n_heads, n_kv = adapter.num_heads(model, block), adapter.num_kv_heads(model, block)
            keep = [h for h in range(n_heads) if h not in removed_heads]
            kv_keep = kv_layout(n_heads, n_kv, keep)[0] if adapter.supports_gqa else None
            reshape_attention(model, adapter, block, keep, kv_keep)
            logger.info("layer %d: attention heads %d -> %d", idx, n_heads, len(keep))
        removed_neurons = set(plan.neurons.get(idx, []))
        if removed_neurons and idx not in plan.layers:
            size = adapter.intermediate_size(block)
            reshape_ffn(adapter, block, [n for n in range(size) if n not in removed_neurons])
            logger.info("layer %d: FFN neurons %d -> %d", idx, size, size - len(removed_neurons))
    if plan.layers:
        before = len(layers)
        remove_layers(model, adapter, plan.layers)
        logger.info("layers %d -> %d (removed %s)", before, before - len(plan.layers), plan.layers)
    sync_config(model, adapter, plan=plan)
    return model


def _refuse_attached_gates(model: nn.Module, adapter: ArchAdapter, plan: PruningPlan) -> None:
    """Raise (before any change) if a head / neuron gate sits on a projection this plan resizes.

    Such a gate keeps its old size, so every forward after the surgery would fail (or, with a plan whose sizes
    happen to broadcast, gate the wrong units) until its handle is removed.
    """
    layers = adapter.layers(model)
    for what, mapping, module_of in (("heads", plan.heads, adapter.out_proj), ("neurons", plan.neurons,
                                                                                 adapter.ffn_out)):
        for idx in mapping:
            if idx in plan.layers:
                continue
            hooks = module_of(layers[idx])._forward_pre_hooks.values()
            if any(getattr(hook, "hfprune_gate", None) == what for hook in hooks):
                raise ValueError(
                    f"hfprune.prune: layer {idx} still has {what} gates attached (an hfprune.mask / masked / "
                    f"attach_gates handle, or PruningCallback's mask) and this plan resizes its {what}; remove them "
                    "first (handle.remove(), leave the `with hfprune.masked(...)` block, or "
                    "PruningCallback.remove_mask()). Nothing was changed."
                )


def apply_structure(model: nn.Module, record: dict) -> None:
    """Give a freshly built model the per-layer shapes in `record` (weights are loaded afterwards)."""
    if "channels" in record:  # a CNN's channel-group record (hfprune.surgery.channels)
        from .channels import apply_channel_structure

        return apply_channel_structure(model, record)
    adapter = get_adapter(model)
    layers = adapter.layers(model)
    specs = record["layers"]
    if len(specs) != len(layers):
        raise ValueError(f"hfprune record lists {len(specs)} layers but the config builds {len(layers)}")
    for block, spec in zip(layers, specs):
        heads, kv = int(spec["heads"]), int(spec["kv_heads"])
        if (heads, kv) != (adapter.num_heads(model, block), adapter.num_kv_heads(model, block)):
            base_kv = adapter.num_kv_heads(model, block)
            reshape_attention(model, adapter, block, list(range(heads)), [i % base_kv for i in range(kv)])
        ffn = int(spec["ffn"])
        if ffn != adapter.intermediate_size(block):
            reshape_ffn(adapter, block, list(range(ffn)))
    adapter.after_build(model, record)
