"""Removed-channel compensation: a CNN consumer's expected output stays what it was when channels are removed.

A removed channel does not output zero: after BatchNorm and an activation it carries a roughly constant value (for a
channel with |gamma| ~ 0, act(beta)), so removing it shifts the mean of every layer that read it, and that shift,
not the lost information, is what dominates accuracy before recovery. Compensation measures, on calibration batches,
the mean of what the removed channels contributed to each consumer's output (per output channel, over the batches
and all output positions: sum_k W[:, k] * c_k for a 1x1 convolution or a linear layer, c_k the channel's mean input)
and folds it into the consumer's output offset: added to its bias, or, for a convolution without bias, subtracted
from the running mean of the BatchNorm right after it (the family adapter says which one, `ChannelOp.norm`; the
running mean acts in eval mode, the mode the pruned model is evaluated in). Paper: Evci et al., 2018, "Mean
Replacement Pruning". Only offsets change, so the model's structure and its saved format stay as they are.

Masked and pruned stay equal: the same offsets are folded in both (masks zero the channel at every consumer's
input, surgery removes it), and a mask's `remove()` restores the original biases and running means.

There is no data-free estimate: a consumer often reads its channels after a residual sum, a depthwise conv and a
second BatchNorm, a squeeze-and-excitation scale or a GELU MLP, where no closed form from the producer's BatchNorm
(act(beta)) holds; the measured mean is exact for every family.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from .arch import get_adapter, unwrap_model
from .arch.channels import channel_groups
from .plan import PruningPlan
from .transaction import transaction
from .units import attach, get_kind


@dataclass
class ChannelCompensation:
    """Measured output offsets of the consumers of a plan's removed channels (`hfprune.channel_compensation`).

    Attributes:
        channels (`dict[str, list[int]]`): the plan's channels, as measured.
        sizes (`dict[str, int]`): each planned group's size at measurement (a plan for that structure only).
        shifts (`dict[str, torch.Tensor]`): consumer path -> `[out]` mean contribution of its removed input
            channels (float32, on the model's device).
        targets (`dict[str, tuple[str, str]]`): consumer path -> (module path, `"bias"` or `"running_mean"`): where
            the offset is folded (added to a bias, subtracted from a running mean).
        num_batches (`int`): how many calibration batches were used.
    """

    channels: dict[str, list[int]]
    sizes: dict[str, int]
    shifts: dict[str, torch.Tensor]
    targets: dict[str, tuple[str, str]]
    num_batches: int

    def check(self, model: nn.Module, plan: PruningPlan) -> None:
        """Raise `ValueError` unless this compensation was measured for `plan` on a model of `model`'s structure."""
        if {k: list(v) for k, v in plan.channels.items()} != self.channels:
            raise ValueError("compensate: this ChannelCompensation was measured for a different plan; measure it "
                             "for this one (hfprune.channel_compensation(model, plan, batches))")
        groups = channel_groups(model)
        for name, size in self.sizes.items():
            if name not in groups or groups[name].size != size:
                raise ValueError(f"compensate: channel group {name!r} had {size} channels when this compensation "
                                 "was measured; the model has changed since (measure again)")
        for consumer, (path, attr) in self.targets.items():
            tensor = getattr(model.get_submodule(path), attr, None)
            if tensor is None or tensor.shape != self.shifts[consumer].shape:
                raise ValueError(f"compensate: {path}.{attr} does not match the measured offset of {consumer}")

    def tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """The tensors `fold` changes in place (biases and running means of `model`)."""
        return [getattr(model.get_submodule(path), attr) for path, attr in self.targets.values()]

    def fold(self, model: nn.Module) -> CompensationHandle:
        """Fold the offsets into the model in place; the handle's `remove()` restores the original tensors."""
        handle = CompensationHandle()
        with torch.no_grad():
            for consumer, (path, attr) in self.targets.items():
                tensor = getattr(model.get_submodule(path), attr)
                # The consumer loses the removed channels' contribution: its bias gains it back; the BatchNorm after
                # a bias-free consumer sees that much less, so its running mean goes down by as much.
                delta = self.shifts[consumer].to(tensor) * (1.0 if attr == "bias" else -1.0)
                original = tensor.detach().clone()
                tensor.add_(delta)
                handle.folds.append((tensor, original, tensor.detach().clone(), delta))
        return handle


@dataclass
class CompensationHandle:
    """Undoes `ChannelCompensation.fold`: exactly (the original tensors) where nothing changed them since, by
    subtracting the fold where training did (so a bias trained while masked keeps what it learned)."""

    folds: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        with torch.no_grad():
            for tensor, original, folded, delta in self.folds:
                if torch.equal(tensor, folded):
                    tensor.copy_(original)
                elif tensor.shape == delta.shape:
                    tensor.sub_(delta)
        self.folds.clear()


def consumer_targets(model: nn.Module, plan: PruningPlan, groups=None) -> dict[str, tuple[str, str, torch.Tensor]]:
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


def _contribution(module: nn.Module, x: torch.Tensor, removed: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Sum over all output positions of what the `removed` input channels add to `module`'s output, and the count."""
    removed = removed.to(device=x.device, dtype=x.dtype)
    if isinstance(module, nn.Conv2d):
        # The conv itself (padding, stride, groups), so the mean is exact at the borders too.
        y = module._conv_forward(x * removed.view(1, -1, 1, 1), module.weight, None)
        return y.double().sum(dim=(0, 2, 3)), y.numel() // y.shape[1]
    if isinstance(module, nn.Linear):  # channels last: a classifier's (N, C) or ConvNeXt's (N, H, W, C)
        y = F.linear(x * removed, module.weight).reshape(-1, module.out_features)
        return y.double().sum(dim=0), y.shape[0]
    raise TypeError(f"compensate: cannot measure a {type(module).__name__} consumer")


class _Stop(Exception):
    """Ends a forward pass once the consumer being measured has run (the layers after it cannot change it)."""


def _pixel_batches(dataloader: Iterable, max_batches: int | None):
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            return
        if not isinstance(batch, dict) or "pixel_values" not in batch:
            got = f"keys {list(batch)}" if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"channel_compensation: every batch must be a dict with 'pixel_values' (got {got})")
        yield batch["pixel_values"]


def _mean_contributions(model: nn.Module, batches: Iterable, selected: dict[str, torch.Tensor],
                        stop_after: str | None = None) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Mean over `batches` of what the `selected` input channels add to each consumer's output, the order in which
    the consumers ran, and the number of batches."""
    sums = {path: [0.0, 0] for path in selected}
    order: list[str] = []

    def measure(path):
        def hook(module, args):
            total, count = _contribution(module, args[0], selected[path])
            sums[path][0] = sums[path][0] + total
            sums[path][1] += count
            if path not in order:
                order.append(path)
            if path == stop_after:
                raise _Stop

        return hook

    device = next(model.parameters()).device
    # prepend: the hooks see the consumers' inputs before any channel gate
    handles = [model.get_submodule(p).register_forward_pre_hook(measure(p), prepend=True) for p in selected]
    used = 0
    try:
        for pixel_values in batches:
            try:
                model(pixel_values=pixel_values.to(device))
            except _Stop:
                pass
            used += 1
    finally:
        for handle in handles:
            handle.remove()
    if not used:
        raise ValueError("channel_compensation: the dataloader yielded no batch (compensation needs calibration "
                         "data; there is no data-free estimate)")
    missing = [path for path, (_, count) in sums.items() if not count]
    if missing:
        raise ValueError(f"channel_compensation: {missing[0]} never ran on the calibration batches")
    return {p: (total / count).float() for p, (total, count) in sums.items()}, order, used


def channel_compensation(model: nn.Module, plan: PruningPlan, dataloader: Iterable, *,
                         max_batches: int | None = None, sequential: bool = False) -> ChannelCompensation:
    """Measure, on calibration batches, the offsets that keep each consumer's mean output when `plan` is applied.

    The model does not change (eval mode, no gradients; the training mode is restored). Pass the result, or the
    batches themselves, as `compensate=` to `hfprune.prune`, `hfprune.mask` or `hfprune.masked`.

    Args:
        model (`PreTrainedModel`): a CNN of a supported family, *before* the plan is applied.
        plan (`PruningPlan`): channels to remove (`PruningPlan(channels=...)`), validated first.
        dataloader (`Iterable[dict]`): batches with `pixel_values` (other keys are ignored), e.g. a few hundred
            training images.
        max_batches (`int`, *optional*): use at most this many batches.
        sequential (`bool`): `False` (one pass): each offset is the removed channels' mean contribution in the
            original model. `True`: consumer by consumer in the order they run, the offset that brings the
            consumer's mean output back to the original one *in the masked model with every earlier offset
            applied*, so it also cancels the mean drift of its kept inputs caused by the removals upstream. One
            pass, plus one pass per consumer that stops at that consumer; the batches are held in memory.

    Returns:
        `ChannelCompensation`.

    Raises:
        ValueError: a bad plan, a consumer with nowhere to fold into, a batch without `pixel_values`, or no batch.

    Example:
        ```python
        >>> comp = hfprune.channel_compensation(model, plan, train_batches, max_batches=8)
        >>> with hfprune.masked(model, plan, compensate=comp):
        ...     masked = model(pixel_values=x).logits
        >>> hfprune.prune(model, plan, compensate=comp)      # the same offsets: equal to the masked model
        ```
    """
    model = unwrap_model(model)
    if not plan.channels:
        raise ValueError("channel_compensation: the plan removes no channels (PruningPlan(channels=...))")
    plan.validate(model)
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"channel_compensation: max_batches must be a positive integer or None, not {max_batches!r}")
    groups = channel_groups(model)
    targets = consumer_targets(model, plan, groups)
    with transaction(model) as snapshot:  # an error or Ctrl-C mid-way leaves no gate, hook or fold behind
        snapshot.keep(*(getattr(model.get_submodule(t[0]), t[1]) for t in targets.values()))
        shifts, used = _measure(model, plan, dataloader, max_batches, sequential, targets)
    device = next(model.parameters()).device
    return ChannelCompensation(
        channels={k: list(v) for k, v in plan.channels.items()},
        sizes={name: groups[name].size for name in plan.channels},
        shifts={p: v.to(device) for p, v in shifts.items()},
        targets={p: (t[0], t[1]) for p, t in targets.items()},
        num_batches=used,
    )


def _measure(model: nn.Module, plan: PruningPlan, dataloader: Iterable, max_batches: int | None, sequential: bool,
             targets: dict) -> tuple[dict[str, torch.Tensor], int]:
    """The offsets of `channel_compensation` and the number of batches used (the model is left as it was)."""
    removed = {path: t[2] for path, t in targets.items()}
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        with torch.no_grad():
            if not sequential:
                shifts, _, used = _mean_contributions(model, _pixel_batches(dataloader, max_batches), removed)
            else:
                batches = list(_pixel_batches(dataloader, max_batches))
                full, order, used = _mean_contributions(model, batches, {p: torch.ones_like(r)
                                                                         for p, r in removed.items()})
                shifts = {p: torch.zeros_like(v) for p, v in full.items()}
                draft = ChannelCompensation({}, {}, shifts, {p: t[:2] for p, t in targets.items()}, used)
                gates = attach(model, get_adapter(model), {"channels": True}, plan)
                try:
                    for path in order:  # every earlier consumer's offset is final when this one is measured
                        fold = draft.fold(model)
                        try:
                            kept = _mean_contributions(model, batches, {path: 1 - removed[path]}, stop_after=path)[0]
                        finally:
                            fold.remove()
                        shifts[path] = full[path] - kept[path]
                finally:
                    gates.remove()
    finally:
        for module, training in modes:
            module.training = training
    return shifts, used


def resolve_compensation(model: nn.Module, plan: PruningPlan, compensate) -> ChannelCompensation | None:
    """`compensate=` of prune / mask: None, a `ChannelCompensation` (checked) or batches (measured now)."""
    if compensate is None:
        return None
    if not any(get_kind(name).compensable for name in plan.kinds()):
        raise ValueError("compensate= applies to CNN channel plans (PruningPlan(channels=...)) only")
    if isinstance(compensate, ChannelCompensation):
        compensate.check(model, plan)
        return compensate
    if isinstance(compensate, (bool, str, bytes, dict)) or not isinstance(compensate, Iterable):
        raise TypeError("compensate= takes calibration batches (an iterable of dicts with 'pixel_values'; a single "
                        "batch goes in a list) or a ChannelCompensation, not "
                        f"{type(compensate).__name__}; there is no data-free estimate")
    return channel_compensation(model, plan, compensate)
