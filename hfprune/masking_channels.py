"""Reversible masks on CNN channels: one gate per channel group, applied to the input of every layer that consumes
the group (the next convolutions, an SE reduce conv, the classifier).

Gating the consumers' inputs, not the producer's output, is what makes masking equal removal: a channel on a
residual path is still computed and added into the stream, but no layer ever reads it, exactly as after surgery.
The same gates with `requires_grad=True` are what the Taylor criterion differentiates (one tensor shared by all
consumers of a group, so its gradient sums their contributions).
"""

from __future__ import annotations

import torch
from torch import nn

from .arch.channels import ChannelGroup, channel_groups
from .compensation import resolve_compensation
from .masking import Gates
from .plan import PruningPlan


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


def attach_channel_gates(model: nn.Module, plan: PruningPlan | None = None, requires_grad: bool = False,
                         groups: dict[str, ChannelGroup] | None = None, names=None, compensate=None) -> Gates:
    """Attach a gate (all ones, or zero where `plan` removes a channel) to channel groups of a CNN.

    Args:
        model (`PreTrainedModel`): a model of a supported CNN family.
        plan (`PruningPlan`, *optional*): channels whose gate starts at 0 (validated first).
        requires_grad (`bool`): leaf gates that collect gradients (Taylor scoring).
        groups (`dict[str, ChannelGroup]`, *optional*): `hfprune.channel_groups(model)`, if already computed.
        names (`Iterable[str]`, *optional*): the groups that get gates (default: the plan's groups, or every prunable
            group when there is no plan).
        compensate (`Iterable[dict]` or `ChannelCompensation`, *optional*): removed-channel compensation (needs
            `plan`): calibration batches or a measured `hfprune.channel_compensation`; the offsets are folded while
            the gates are on and restored by `.remove()`.

    Returns:
        `Gates` with `channel_gates` filled; `.remove()` detaches every hook.

    Example:
        ```python
        >>> from hfprune.masking_channels import attach_channel_gates
        >>> handle = attach_channel_gates(model, plan)
        >>> handle.remove()
        ```
    """
    from .arch import unwrap_model

    model = unwrap_model(model)
    groups = groups if groups is not None else channel_groups(model)
    if plan is not None:
        plan.validate(model)
    compensation = None
    if compensate is not None:
        if plan is None:
            raise ValueError("compensate= needs a plan: it folds the mean of the plan's removed channels")
        compensation = resolve_compensation(model, plan, compensate)  # measured before any gate is attached
    if names is None:
        names = list(plan.channels) if plan is not None else [n for n, g in groups.items() if g.prunable]
    device = next(model.parameters()).device
    gates = Gates()
    try:
        for name in names:
            group = groups[name]
            gate = torch.ones(group.size, device=device, dtype=torch.float32)
            off = plan.channels.get(name, []) if plan is not None else []
            if off:
                gate[off] = 0.0
            gates.channel_gates[name] = gate = gate.requires_grad_(requires_grad)
            for path in group.paths("in"):
                module = model.get_submodule(path)
                gates._handles.append(module.register_forward_pre_hook(_channel_hook(gate, name)))
        if compensation is not None:
            gates._handles.append(compensation.fold(model))  # after the hooks: remove() restores the offsets
    except Exception:
        gates.remove()
        raise
    return gates


def gated_groups(model: nn.Module) -> set[str]:
    """Names of the channel groups that currently carry an hfprune gate (prune refuses to resize them)."""
    found = set()
    for module in model.modules():
        for hook in module._forward_pre_hooks.values():
            if getattr(hook, "hfprune_gate", None) == "channels":
                found.add(hook.hfprune_group)
    return found
