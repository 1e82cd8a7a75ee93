"""Physical removal of CNN channels: every tensor of a channel group is sliced and `model.config` follows.

For each group of the plan, the producing convolutions lose output filters, their BatchNorms the matching
weight / bias / running statistics, depthwise and grouped convolutions the channels they pass through (grouped: in
whole groups, so `groups` shrinks), SE blocks the matching reduce inputs and expand outputs, and the consuming
convolutions and classifier their input columns. The new widths go into `config.hfprune` (the structure record that
`load_pruned` rebuilds from) and, when the family's plain config can say them exactly (a ResNet whose stage widths
changed uniformly: `hidden_sizes`), into the plain keys too, so the folder also loads with `from_pretrained`.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import nn

from ..arch.channels import ChannelOp, channel_adapter, channel_groups
from ..compensation import resolve_compensation
from ..plan import PruningPlan
from ..structure import RECORD_FORMAT, RECORD_KEY, get_record

logger = logging.getLogger("hfprune")


def _select(module: nn.Module, name: str, dim: int, index: torch.Tensor) -> None:
    tensor = getattr(module, name, None)
    if tensor is None:
        return
    new = tensor.detach().index_select(dim, index.to(tensor.device)).clone()
    if isinstance(tensor, nn.Parameter):
        setattr(module, name, nn.Parameter(new, requires_grad=tensor.requires_grad))
    else:
        setattr(module, name, new)  # a registered buffer stays a buffer (running_mean / running_var)


def slice_op(model: nn.Module, op: ChannelOp, index: torch.Tensor) -> None:
    """Keep channels `index` of one tensor of a group (see `hfprune.arch.channels` for the op kinds)."""
    module = model.get_submodule(op.path)
    n = int(index.numel())
    if op.kind == "norm":
        for name in ("weight", "bias", "running_mean", "running_var"):
            _select(module, name, 0, index)
        if isinstance(module, nn.LayerNorm):
            module.normalized_shape = (n,)
        else:
            module.num_features = n
        return
    if not isinstance(module, (nn.Conv2d, nn.Linear)):
        raise TypeError(f"{op.path}: cannot slice a {type(module).__name__} as channel op {op.kind!r}")
    linear = isinstance(module, nn.Linear)
    if op.kind == "in":
        if not linear and module.groups != 1:
            raise TypeError(f"{op.path}: a grouped convolution cannot lose single input channels")
        _select(module, "weight", 1, index)
        setattr(module, "in_features" if linear else "in_channels", n)
        return
    per_group = module.out_channels // module.groups if not linear else 1
    _select(module, "weight", 0, index)
    _select(module, "bias", 0, index)
    setattr(module, "out_features" if linear else "out_channels", n)
    if op.kind == "through":  # depthwise / grouped: in == out channels, weight dim 1 is the per-group input width
        module.in_channels = n
        module.groups = n // per_group


def prune_channels(model: nn.Module, plan: PruningPlan, compensate=None) -> nn.Module:
    """Physically remove the channels of `plan` (`PruningPlan(channels=...)`) from a CNN, in place.

    Args:
        model (`PreTrainedModel`): a model of a supported CNN family.
        plan (`PruningPlan`): channels to remove per group, indexed as the model is now.
        compensate (`Iterable[dict]` or `ChannelCompensation`, *optional*): fold each removed channel's mean
            contribution into its consumers' biases / BatchNorm running means (`hfprune.compensation`): calibration
            batches (measured here, before any change) or a measured `hfprune.channel_compensation`.

    Returns:
        The same `model`, pruned, with `config.hfprune` (and plain keys where they can say it) updated.

    Raises:
        ValueError: the plan does not fit the model, a channel gate is still attached, or the compensation cannot be
            measured or does not fit (nothing is changed then).

    Example:
        ```python
        >>> hfprune.prune(model, hfprune.PruningPlan(channels={"resnet.encoder.stages.0.layers.0.layer.0.convolution":
        ...                                                     [0, 3]}))
        ```
    """
    from ..arch import unwrap_model
    from ..masking_channels import gated_groups

    model = unwrap_model(model)
    plan.validate(model)  # before any change: a bad plan leaves the model untouched

    gated = gated_groups(model)
    if gated:
        raise ValueError(f"hfprune.prune: channel gates are still attached to group {min(gated)!r} (an hfprune.mask "
                         "/ masked handle or PruningCallback's mask); remove them first (handle.remove()). Nothing "
                         "was changed.")
    compensation = resolve_compensation(model, plan, compensate)  # measured on the model as it is, before slicing
    adapter = channel_adapter(model)
    groups = channel_groups(model)
    if compensation is not None:
        compensation.fold(model)  # full-size tensors: a target that is also sliced below keeps its kept rows' fold
    sync_channel_config(model, groups)  # a record of the structure *before* this plan
    for name, removed in plan.channels.items():
        group = groups[name]
        drop = set(removed)
        keep = torch.tensor([i for i in range(group.size) if i not in drop], dtype=torch.long)
        for op in group.ops:
            slice_op(model, op, keep)
        logger.info("channel group %s: %d -> %d channels%s", name, group.size, keep.numel(),
                    " (coupled)" if group.coupled else "")
    sync_channel_config(model, channel_groups(model), plan=plan, adapter=adapter)
    return model


def sync_channel_config(model: nn.Module, groups, plan: PruningPlan | None = None, adapter=None) -> dict:
    """Write the group sizes into `config.hfprune` and, where exact, into the family's plain config keys."""
    config = model.config
    sizes = {name: g.size for name, g in groups.items()}
    record = get_record(config)
    if record is None or "channels" not in record:
        record = {"format": RECORD_FORMAT, "unit": "channels", "base": dict(sizes), "history": [],
                  "base_params": sum(p.numel() for p in model.parameters())}
    record["channels"] = sizes
    if plan is not None:
        record["history"].append({"channels": {k: list(v) for k, v in plan.channels.items()}})
    if adapter is not None:
        updates = adapter.config_updates(model, groups)
        expressible = bool(updates) and _config_builds(model, updates)
        if expressible:
            for key, value in updates.items():
                old = getattr(config, key, None)
                if old != value:
                    logger.info("config.%s: %s -> %s", key, old, value)
                setattr(config, key, value)
        record["plain_config"] = expressible or _config_builds(model, {})
    setattr(config, RECORD_KEY, record)
    return record


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


def apply_channel_structure(model: nn.Module, record: dict) -> None:
    """Give a freshly built CNN the channel-group sizes in `record` (weights are loaded afterwards)."""
    groups = channel_groups(model)
    prefixes = channel_adapter(model).base_prefixes
    for name, size in record["channels"].items():
        # The record names groups as the saved class does; the base model (AutoModel) has no head prefix, and the
        # head class holds the base model under one.
        found = [n for n in (name, *(f"{p}.{name}" for p in prefixes),
                             *(name[len(p) + 1:] for p in prefixes if name.startswith(f"{p}."))) if n in groups]
        group = groups.get(found[0]) if found else None
        if group is None:
            raise ValueError(f"hfprune record names channel group {name!r}, which the config does not build")
        size = int(size)
        if size > group.size:
            raise ValueError(f"hfprune record gives channel group {name!r} {size} channels, but the config builds "
                             f"only {group.size}")
        if size < group.size:
            keep = torch.arange(size)
            for op in group.ops:
                slice_op(model, op, keep)
