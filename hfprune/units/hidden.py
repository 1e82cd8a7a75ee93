"""Hidden channels: one index set for a transformer's whole residual stream (its width, `hidden_size`).

A hidden channel is a column of every embedding table (and of ViT's class / position tokens, a row of its patch
projection), an entry of every norm on the stream, an input column of every layer that reads the stream (q/k/v, the
FFN input projections, the pooler, the task head: a tied LM head is the embedding itself) and an output row of every
layer that writes it (the attention output projection, the FFN output projection). The adapter
(`hfprune.arch.transformer`, the `hidden_*` entries) says where these are.

The gate keeps removed channels at zero in the stream (at its start and at the output of every layer that writes
into it) and makes every norm on it compute its statistics over the kept channels only (a forward hook recomputes
the norm on the kept subset and scatters it back among zeros), so every layer reading the stream sees what it would
read after removal: the masked model computes what the pruned one does.
"""

from __future__ import annotations

import logging

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F

from ..arch.base import get_submodule
from .base import UnitKind, bias_site, index_entry, module_names, new_gate, set_if_valid
from .slicing import ZeroWidthConv1D, select_inputs, select_outputs

logger = logging.getLogger("hfprune")
TAG = "hidden"


# ----- where the stream's tensors are --------------------------------------------------------------------------
def _base(model: nn.Module) -> nn.Module:
    return getattr(model, "base_model", model)


def _found(root: nn.Module, paths) -> list[nn.Module]:
    out = []
    for path in paths:
        try:
            module = get_submodule(root, path)
        except AttributeError:
            continue
        if module is not None:
            out.append(module)
    return out


def _tensor_owners(model: nn.Module, adapter) -> list[tuple[nn.Module, str]]:
    owners = []
    for path in adapter.hidden_tensors:
        parent, _, name = path.rpartition(".")
        found = _found(_base(model), [parent])
        if found and isinstance(getattr(found[0], name, None), torch.Tensor):
            owners.append((found[0], name))
    return owners


def block_norms(model: nn.Module, adapter) -> list[nn.Module]:
    """Each block's norms on the stream, in layer order (what Minitron's hidden-size scores read)."""
    return [m for block in adapter.layers(model) for m in _found(block, adapter.hidden_block_norms)]


def norms(model: nn.Module, adapter) -> list[nn.Module]:
    """Every norm on the stream: each block's, then the model-level ones (embedding norm, final norm)."""
    return block_norms(model, adapter) + _found(_base(model), adapter.hidden_norms)


def writers(model: nn.Module, adapter) -> list[nn.Module]:
    """The layers whose output rows are hidden channels: each block's attention and FFN output projections."""
    return [m for block in adapter.layers(model) for m in (adapter.out_proj(block), adapter.ffn_out(block))]


def readers(model: nn.Module, adapter) -> list[nn.Module]:
    """The layers whose input columns are hidden channels (q/k/v and FFN inputs, pooler, the head), deduplicated."""
    mods: dict[int, nn.Module] = {}
    for block in adapter.layers(model):
        try:
            qkv = [s.module for s in adapter.qkv_segments(block)]
        except AttributeError:  # a layer with no head left has no q/k/v (HeadlessAttention)
            qkv = []
        for module in qkv + adapter.ffn_in(block):
            mods.setdefault(id(module), module)
    for module in _found(_base(model), adapter.hidden_readers) + _found(model, adapter.hidden_head_paths(model) or ()):
        mods.setdefault(id(module), module)
    return list(mods.values())


def width(model: nn.Module, adapter) -> int:
    """The stream's current width, read from its first norm (true after surgery, whatever the config says)."""
    return int(norms(model, adapter)[0].weight.shape[0])


# ----- gates ---------------------------------------------------------------------------------------------------
def _stream_hook(gate: torch.Tensor):
    def hook(module, args, output):
        first = output[0] if isinstance(output, tuple) else output
        first = first * gate.to(dtype=first.dtype, device=first.device)
        return (first, *output[1:]) if isinstance(output, tuple) else first

    hook.hfprune_gate = TAG
    return hook


def _subset_norm(module: nn.Module, x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """The norm of `x[..., keep]` with the kept entries of its weight / bias: what the pruned norm computes."""
    sub = x.index_select(-1, keep)
    params = {name: p.index_select(0, keep) for name, p in module.named_parameters(recurse=False)
              if p is not None and p.dim() == 1 and p.shape[0] == x.shape[-1]}
    if isinstance(module, nn.LayerNorm):
        return F.layer_norm(sub, (int(keep.numel()),), params.get("weight"), params.get("bias"), module.eps)
    # RMSNorm-style modules: the family's own forward on the subset (its hooks, this one included, stay out)
    module._hfprune_subset = True
    try:
        return functional_call(module, params, (sub,))
    finally:
        del module._hfprune_subset


def _norm_hook(gate: torch.Tensor, keep: torch.Tensor):
    def hook(module, args, output):
        if getattr(module, "_hfprune_subset", False):
            return None
        x = args[0]
        k = keep.to(x.device)
        sub = _subset_norm(module, x, k)
        sub = sub * gate.index_select(0, k.to(gate.device)).to(dtype=sub.dtype, device=sub.device)
        return torch.zeros_like(output).index_copy(-1, k, sub.to(output.dtype))

    hook.hfprune_gate = TAG
    return hook


# ----- removal -------------------------------------------------------------------------------------------------
def _new_param(old: torch.Tensor, new: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(new.clone(), requires_grad=old.requires_grad)


def _slice_rows(module: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(module, ZeroWidthConv1D):  # a Conv1D with no input left: weight (0, out), bias (out,)
        module.weight = _new_param(module.weight, module.weight.detach().index_select(1, keep))
        module.bias = _new_param(module.bias, module.bias.detach().index_select(0, keep))
        module.nf = int(keep.numel())
    else:
        select_outputs(module, keep)


def _slice_norm(module: nn.Module, keep: torch.Tensor) -> None:
    size = None
    for name, param in list(module.named_parameters(recurse=False)):
        if param.dim() == 1:
            size = param.shape[0]
            setattr(module, name, _new_param(param, param.detach().index_select(0, keep.to(param.device))))
    if isinstance(module, nn.LayerNorm):
        module.normalized_shape = (int(keep.numel()),)
    for attr in ("hidden_size", "dim"):
        if getattr(module, attr, None) == size:
            setattr(module, attr, int(keep.numel()))


def _slice_producer(module: nn.Module, keep: torch.Tensor) -> None:
    if isinstance(module, nn.Conv2d):
        with torch.no_grad():
            module.weight = _new_param(module.weight, module.weight.index_select(0, keep))
            if module.bias is not None:
                module.bias = _new_param(module.bias, module.bias.index_select(0, keep))
        module.out_channels = int(keep.numel())
    else:
        _slice_rows(module, keep)


def reshape_hidden(model: nn.Module, adapter, keep: list[int]) -> None:
    """Keep hidden channels `keep` everywhere on the stream, in place (a tied head stays tied to its embedding)."""
    base = _base(model)
    # where the real weights are (a streamed part: the other parts are meta, and index fine with it)
    device = next((p.device for p in model.parameters() if not p.is_meta), torch.device("cpu"))
    index = torch.tensor(keep, dtype=torch.long, device=device)
    embeddings = _found(base, adapter.hidden_embeddings)
    tied = {id(e.weight): e for e in embeddings}
    head_readers = readers(model, adapter)
    with torch.no_grad():
        for emb in embeddings:
            emb.weight = _new_param(emb.weight, emb.weight.index_select(1, index))
            emb.embedding_dim = len(keep)
        for owner, name in _tensor_owners(model, adapter):
            tensor = getattr(owner, name)
            setattr(owner, name, _new_param(tensor, tensor.index_select(-1, index)))
    for module in _found(base, adapter.hidden_producers):
        _slice_producer(module, index)
    for module in norms(model, adapter):
        _slice_norm(module, index)
    for module in writers(model, adapter):
        _slice_rows(module, index)
    for module in head_readers:
        owner = tied.get(id(module.weight))
        if owner is not None:  # a tied LM head: the embedding already lost the columns
            module.weight = owner.weight
            module.in_features = len(keep)
        else:
            select_inputs(module, index)


# ----- the kind ------------------------------------------------------------------------------------------------
class Hidden(UnitKind):
    name = "hidden"
    noun = "hidden channels"
    order = -10  # first: it slices the other dimension of the tensors heads / neurons resize
    compensable = True
    structure_keys = ("hidden_size",)

    def empty(self):
        return []

    def normalise(self, value):
        return index_entry(self.name, value, "channel")

    def to_json(self, entry):
        return list(entry)

    def validate(self, model, adapter, plan):
        if not plan.hidden:
            return
        if adapter.hidden_head_paths(model) is None:
            heads = ", ".join(sorted(adapter.hidden_heads))
            raise ValueError(f"PruningPlan.hidden: {type(model).__name__} has a task head hfprune does not know the "
                             f"hidden-width readers of (known: classes ending in {heads})")
        size = width(model, adapter)
        if plan.hidden[-1] >= size:
            raise ValueError(f"PruningPlan.hidden: channel {plan.hidden[-1]} is out of range (the model's hidden "
                             f"size is {size}); was this plan made for a different model?")
        if len(plan.hidden) >= size:
            raise ValueError(f"PruningPlan.hidden removes all {size} hidden channels; at least one must stay")

    def structure(self, model, adapter):
        return {"hidden_size": width(model, adapter)}

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        size = width(model, adapter)
        off = plan.hidden if plan is not None else []
        gate = new_gate(model, size, off, requires_grad)
        keep = torch.tensor([i for i in range(size) if i not in set(off)], dtype=torch.long)
        base = _base(model)
        handles = [m.register_forward_hook(_stream_hook(gate))
                   for m in _found(base, adapter.hidden_stream_starts) + writers(model, adapter)]
        handles += [m.register_forward_hook(_norm_hook(gate, keep)) for m in norms(model, adapter)]
        gates.add(self.name, "stream", gate, *handles)

    def check_removal(self, model, adapter, plan):
        for name, module in model.named_modules():
            for hook in (*module._forward_hooks.values(), *module._forward_pre_hooks.values()):
                if getattr(hook, "hfprune_gate", None) == TAG:
                    raise ValueError(f"hfprune.prune: {name or type(model).__name__} still has hidden-channel gates "
                                     "attached (an hfprune.mask / masked / attach_gates handle); remove them first "
                                     "(handle.remove()). Nothing was changed.")

    def remove(self, model, adapter, plan):
        size = width(model, adapter)
        drop = set(plan.hidden)
        reshape_hidden(model, adapter, [i for i in range(size) if i not in drop])
        logger.info("hidden size %d -> %d", size, size - len(drop))

    def write_record(self, record, structure, plan):
        record["hidden_size"] = structure["hidden_size"]

    def write_config(self, model, adapter, structure, record, plan):
        key, size = adapter.config_hidden_key, structure["hidden_size"]
        if not key or getattr(model.config, key) == size:
            return
        # The head size must not follow the width: write it down, and the uniform head counts with it (the
        # config checks hidden_size against them, so they are written in one step).
        updates = {"head_dim": adapter.head_dim(model), key: size}
        heads, kv = set(structure.get("heads", [])), set(structure.get("kv_heads", []))
        if adapter.config_heads_key and len(heads) == 1 and len(kv) == 1 and 0 not in heads:
            updates[adapter.config_heads_key] = heads.pop()
            if adapter.config_kv_heads_key:
                updates[adapter.config_kv_heads_key] = kv.pop()
        set_if_valid(model.config, updates)

    def rebuild(self, model, adapter, record):
        size, now = int(record.get("hidden_size", width(model, adapter))), width(model, adapter)
        if size > now:
            raise ValueError(f"hfprune record gives a hidden size of {size}, but the config builds only {now}")
        if size < now:
            reshape_hidden(model, adapter, list(range(size)))

    def compensation_sites(self, model, adapter, plan):
        """Every reader of the stream outside the plan's removed layers; one without a bias the config can give it
        (a bias-free LM head) is skipped."""
        sites, flags, names = {}, set(), module_names(model)
        indicator = torch.zeros(width(model, adapter))
        indicator[plan.hidden] = 1.0
        kept_blocks = [b for i, b in enumerate(adapter.layers(model)) if i not in set(plan.layers)]
        for module in readers(model, adapter):
            inside = [b for b in adapter.layers(model) if any(m is module for m in b.modules())]
            if inside and not any(inside[0] is b for b in kept_blocks):
                continue
            bias_site(model, adapter, module, indicator.clone(), sites, flags, names, optional=True)
        return sites, flags

    def config_says(self, config, adapter, record):
        return "hidden_size" not in record or int(config.hidden_size) == int(record["hidden_size"])


__all__ = ["Hidden", "block_norms", "norms", "readers", "reshape_hidden", "width", "writers"]
