"""CNN channels: one gate per channel group on the input of every consumer; removal slices every tensor of the group.

The adapter (`hfprune.arch.channels`) describes each group as ops: producers lose output filters, their BatchNorms
the matching statistics, depthwise / grouped convolutions the channels they pass through (grouped: in whole groups),
SE blocks the matching rows, and consumers (next convolutions, the classifier) their input columns.

Gating the consumers' inputs, not the producer's output, is what makes masking equal removal: a channel on a
residual path is still computed and added into the stream, but no layer ever reads it, exactly as after surgery.
The same gates with `requires_grad=True` are what the Taylor criterion differentiates (one tensor shared by all
consumers of a group, so its gradient sums their contributions). The new widths go into `config.hfprune` (the
record that `load_pruned` rebuilds from) and, when the family's plain config can say them exactly (a ResNet whose
stage widths changed uniformly: `hidden_sizes`), into the plain keys too, so the folder also loads with
`from_pretrained`.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..arch.channels import ChannelGroup, channel_groups
from .base import UnitKind, new_gate
from .slicing import slice_op

logger = logging.getLogger("hfprune")


def _channel_hook(gate: torch.Tensor, name: str):
    def hook(module, args):
        x = args[0]
        g = gate.to(dtype=x.dtype, device=x.device)
        # Convolutions read channels at dim 1 (N, C, H, W); linear layers at the last dim (ConvNeXt's pwconv2).
        g = g.view(-1, *([1] * (x.dim() - 2))) if isinstance(module, nn.Conv2d) else g
        return (x * g, *args[1:])

    hook.hfprune_gate = "channels"
    hook.hfprune_group = name
    return hook


class Channels(UnitKind):
    name = "channels"
    noun = "channel groups"
    compensable = True
    structure_keys = ("channels",)

    def normalise(self, value):
        return per_group_entry(value)

    def to_json(self, entry):
        return {k: list(v) for k, v in entry.items()}

    def validate(self, model, adapter, plan):
        groups = channel_groups(model)
        for name, indices in plan.channels.items():
            _check_group(groups, name, indices, model)

    def structure(self, model, adapter):
        return {"channels": {name: g.size for name, g in channel_groups(model).items()}}

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        groups = channel_groups(model)
        if which is True:  # the plan's groups, or every prunable group when there is no plan
            which = list(plan.channels) if plan is not None else [n for n, g in groups.items() if g.prunable]
        for name in which:
            group = groups[name]
            gate = new_gate(model, group.size, plan.channels.get(name, []) if plan else [], requires_grad)
            gates.add(self.name, name, gate, *(model.get_submodule(path).register_forward_pre_hook(
                _channel_hook(gate, name)) for path in group.paths("in")))

    def check_removal(self, model, adapter, plan):
        gated = {hook.hfprune_group for module in model.modules() for hook in module._forward_pre_hooks.values()
                 if getattr(hook, "hfprune_gate", None) == "channels"}
        if gated:
            raise ValueError(f"hfprune.prune: channel gates are still attached to group {min(gated)!r} (an "
                             "hfprune.mask / masked handle or PruningCallback's mask); remove them first "
                             "(handle.remove()). Nothing was changed.")

    def remove(self, model, adapter, plan):
        groups = channel_groups(model)
        for name, removed in plan.channels.items():
            group = groups[name]
            drop = set(removed)
            keep = torch.tensor([i for i in range(group.size) if i not in drop], dtype=torch.long)
            for op in group.ops:
                slice_op(model, op, keep)
            logger.info("channel group %s: %d -> %d channels%s", name, group.size, keep.numel(),
                        " (coupled)" if group.coupled else "")

    def start_record(self, record, model, structure):
        record["unit"] = "channels"
        record["base"].update(structure["channels"])
        record["base_params"] = sum(p.numel() for p in model.parameters())

    def write_record(self, record, structure, plan):
        record["channels"] = dict(structure["channels"])

    def write_config(self, model, adapter, structure, record, plan):
        if plan is None:  # the record of the structure before a plan: the plain keys are decided after it
            return
        config = model.config
        updates = adapter.config_updates(model, channel_groups(model))
        expressible = bool(updates) and _config_builds(model, updates)
        if expressible:
            for key, value in updates.items():
                old = getattr(config, key, None)
                if old != value:
                    logger.info("config.%s: %s -> %s", key, old, value)
                setattr(config, key, value)
        record["plain_config"] = expressible or _config_builds(model, {})

    def rebuild(self, model, adapter, record):
        groups = channel_groups(model)
        for name, size in record["channels"].items():
            group = _recorded_group(groups, name, adapter.base_prefixes)
            size = int(size)
            if size > group.size:
                raise ValueError(f"hfprune record gives channel group {name!r} {size} channels, but the config "
                                 f"builds only {group.size}")
            if size < group.size:
                keep = torch.arange(size)
                for op in group.ops:
                    slice_op(model, op, keep)

    def config_says(self, config, adapter, record):
        return bool(record.get("plain_config"))

    def compensation_sites(self, model, adapter, plan):
        return consumer_targets(model, plan), set()


def per_group_entry(value) -> dict[str, list[int]]:
    """`{group_name: [channel, ...]}` with sorted, unique, non-negative integer indices (empty lists dropped)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"PruningPlan.channels must be a dict {{group_name: [index, ...]}}, got {type(value).__name__}")
    out: dict[str, list[int]] = {}
    for name, indices in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"PruningPlan.channels: group key {name!r} must be a group name (a module path string)")
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"PruningPlan.channels[{name!r}] must be a list of integers, got {indices!r}")
        items = list(indices)
        if not all(isinstance(i, int) and not isinstance(i, bool) for i in items):
            raise ValueError(f"PruningPlan.channels[{name!r}] must hold integers, got {items!r}")
        ints = [int(i) for i in items]
        if len(set(ints)) != len(ints):
            dup = sorted({i for i in ints if ints.count(i) > 1})
            raise ValueError(f"PruningPlan.channels: group {name!r} lists channel {dup[0]} more than once")
        if ints and min(ints) < 0:
            raise ValueError(f"PruningPlan.channels: group {name!r} has negative index {min(ints)}")
        if ints:
            out[name] = sorted(ints)
    return out


def _check_group(groups: dict[str, ChannelGroup], name: str, indices: list[int], model: nn.Module) -> None:
    """One plan entry against the model's groups: a group name, prunable, in range, not all, whole runs."""
    group = groups.get(name)
    if group is None:
        owner = next((n for n, g in groups.items() if name in g.members or name in (
            p.rpartition(".")[0] for p in g.members)), None)
        if owner is not None:
            kind = "coupled group" if groups[owner].coupled else "group"
            raise ValueError(f"PruningPlan.channels: {name!r} is a member of the {kind} {owner!r}, not a group "
                             f"name; name the group ({owner!r}) to remove its channels from all its members")
        raise ValueError(f"PruningPlan.channels: {type(model).__name__} has no channel group {name!r} (its "
                         f"{len(groups)} groups are listed by hfprune.channel_groups(model); e.g. "
                         f"{next(iter(groups))!r})")
    if not group.prunable:
        raise ValueError(f"PruningPlan.channels: group {name!r} is not prunable: {group.reason}")
    if indices[-1] >= group.size:
        raise ValueError(f"PruningPlan.channels: group {name!r} index {indices[-1]} is out of range (the group has "
                         f"{group.size} channels); was this plan made for a different model?")
    if len(indices) >= group.size:
        raise ValueError(f"PruningPlan.channels: group {name!r} would lose all its {group.size} channels; at least "
                         "one must stay")
    g = group.granularity
    if g > 1:
        runs = {i // g for i in indices}
        if len(indices) != len(runs) * g:
            bad = min(r for r in runs if sum(i // g == r for i in indices) != g)
            raise ValueError(f"PruningPlan.channels: group {name!r} passes a grouped convolution with groups of {g} "
                             f"channels, so channels go in whole groups; group {bad} (channels "
                             f"{bad * g}..{bad * g + g - 1}) is only partly listed")


def _config_builds(model: nn.Module, updates: dict) -> bool:
    """Whether `type(model)(config + updates)` has exactly the model's tensor shapes (built on the meta device)."""
    from transformers.initialization import no_init_weights

    config = copy.deepcopy(model.config)
    for key, value in updates.items():
        setattr(config, key, value)
    try:
        with torch.device("meta"), no_init_weights():
            fresh = type(model)(config)
    except Exception:  # noqa: BLE001  (a config the family's own code refuses cannot express the structure)
        return False
    mine = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    theirs = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    return mine == theirs


def _recorded_group(groups: dict[str, ChannelGroup], name: str, prefixes: tuple[str, ...]) -> ChannelGroup:
    """The group a record names: the record names groups as the saved class does; the base model (AutoModel) has no
    head prefix, and the head class holds the base model under one."""
    found = [n for n in (name, *(f"{p}.{name}" for p in prefixes),
                         *(name[len(p) + 1:] for p in prefixes if name.startswith(f"{p}."))) if n in groups]
    if not found:
        raise ValueError(f"hfprune record names channel group {name!r}, which the config does not build")
    return groups[found[0]]


def consumer_targets(model: nn.Module, plan, groups=None) -> dict[str, tuple[str, str, torch.Tensor]]:
    """Consumer path -> (target module path, attribute, removed-channel indicator) for every consumer of the plan.

    Raises:
        ValueError: a consumer has no bias and no BatchNorm with running statistics after it (nothing to fold into).
    """
    groups = groups if groups is not None else channel_groups(model)
    found: dict[str, tuple[str, str, torch.Tensor]] = {}
    for name, removed in plan.channels.items():
        group = groups[name]
        for op in group.consumers():
            module = model.get_submodule(op.path)
            if op.path not in found:
                if getattr(module, "bias", None) is not None:
                    target = (op.path, "bias")
                elif op.norm is not None and _has_running_mean(model.get_submodule(op.norm)):
                    target = (op.norm, "running_mean")
                else:
                    raise ValueError(f"compensate: {op.path} (a consumer of channel group {name!r}) has no bias and "
                                     "no BatchNorm with running statistics after it, so there is nowhere to fold the "
                                     "removed channels' mean; prune without compensate=")
                found[op.path] = (*target, torch.zeros(group.size))
            found[op.path][2][list(removed)] = 1.0
    return found


def _has_running_mean(module: nn.Module) -> bool:
    return isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is not None
