"""Removed-unit compensation: each consumer's expected output stays what it was when units are removed.

A removed unit does not output zero on average: a CNN channel after BatchNorm and an activation carries a roughly
constant value (for a channel with |gamma| ~ 0, act(beta)), an attention head's context and an FFN neuron's
activation have a non-zero mean, and so has a hidden channel of the residual stream. Removing the unit shifts the
mean of every layer that read it, and that shift, not the lost information, dominates the error before recovery.
Compensation measures, on calibration batches, the mean of what the removed units contributed to each consumer's
output (per output feature, over the batches and all output positions: sum_k W[:, k] * c_k for a linear layer or a
1x1 convolution, c_k the unit's mean input) and folds it into the consumer's output offset: added to its bias, or,
for a convolution without bias, subtracted from the running mean of the BatchNorm right after it (the family adapter
says which one, `ChannelOp.norm`). Papers: Evci et al., 2018, "Mean Replacement Pruning" (CNN channels); An et al.,
2024, "Fluctuation-based Adaptive Structured Pruning for Large Language Models" (FLAP: heads, FFN neurons, hidden
channels of transformers, folded into the output projection's bias). Only offsets change, so the structure and the
saved format stay as they are.

Each compensable unit kind (`UnitKind.compensable`) names its consumers (`UnitKind.compensation_sites`): CNN
channels the consumers of their group, heads the attention output projection, FFN neurons the FFN output
projection, hidden channels every layer reading the stream (q/k/v, FFN inputs, pooler, head). A consumer without a
bias gets one where the family's plain config can say it (`adapter.bias_flags`: Llama's `attention_bias` /
`mlp_bias`, which add zero biases to every projection they govern, so the config stays plain and the output exact);
a hidden-channel reader that cannot (a bias-free LM head) is left as it is; any other is refused.

Masked and pruned stay equal: the same offsets are folded in both (masks zero the unit at every consumer's input,
surgery removes it), and a mask's `remove()` restores the original biases and running means (and drops biases it
added). There is no data-free estimate: the measured mean is exact for every family.
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
from .structure import model_structure
from .transaction import transaction
from .units import attach, get_kind


@dataclass
class Compensation:
    """Measured output offsets of the consumers of a plan's removed units (`hfprune.measure_compensation`).

    Attributes:
        units (`dict[str, object]`): the plan's compensable entries (kind -> JSON entry), as measured.
        sizes (`dict[str, int]`): each planned CNN channel group's size at measurement.
        shifts (`dict[str, torch.Tensor]`): consumer path -> `[out]` mean contribution of its removed inputs
            (float32, on the model's device).
        targets (`dict[str, tuple[str, str]]`): consumer path -> (module path, `"bias"` or `"running_mean"`): where
            the offset is folded (added to a bias, subtracted from a running mean).
        num_batches (`int`): how many calibration batches were used.
        bias_flags (`tuple[str, ...]`): config flags the fold turns on to give bias-free consumers a bias.
        structure (`dict`): `hfprune.model_structure` at measurement (transformers; `{}` for CNNs).
    """

    units: dict
    sizes: dict[str, int]
    shifts: dict[str, torch.Tensor]
    targets: dict[str, tuple[str, str]]
    num_batches: int
    bias_flags: tuple[str, ...] = ()
    structure: dict = field(default_factory=dict)

    @property
    def channels(self) -> dict[str, list[int]]:
        return self.units.get("channels", {})

    def check(self, model: nn.Module, plan: PruningPlan) -> None:
        """Raise `ValueError` unless this compensation was measured for `plan` on a model of `model`'s structure."""
        if _entries(plan) != self.units:
            raise ValueError("compensate: this Compensation was measured for a different plan; measure it for this "
                             "one (hfprune.measure_compensation(model, plan, batches))")
        groups = channel_groups(model) if self.sizes else {}
        for name, size in self.sizes.items():
            if name not in groups or groups[name].size != size:
                raise ValueError(f"compensate: channel group {name!r} had {size} channels when this compensation "
                                 "was measured; the model has changed since (measure again)")
        if self.structure and model_structure(model) != self.structure:
            raise ValueError("compensate: the model's structure has changed since this compensation was measured "
                             "(measure again)")
        flagged = _flagged_paths(model, self.bias_flags)
        for consumer, (path, attr) in self.targets.items():
            tensor = getattr(model.get_submodule(path), attr, None)
            if tensor is None and path in flagged:
                continue  # the fold gives it a bias
            if tensor is None or tensor.shape != self.shifts[consumer].shape:
                raise ValueError(f"compensate: {path}.{attr} does not match the measured offset of {consumer}")

    def tensors(self, model: nn.Module) -> list[torch.Tensor]:
        """The tensors `fold` changes in place (biases and running means of `model`; a bias it adds is new)."""
        return _existing(model, self.targets)

    def fold(self, model: nn.Module) -> CompensationHandle:
        """Fold the offsets into the model in place; the handle's `remove()` restores the original tensors."""
        handle = CompensationHandle()
        _enable_biases(model, self.bias_flags, handle)
        with torch.no_grad():
            for consumer, (path, attr) in self.targets.items():
                tensor = getattr(model.get_submodule(path), attr)
                # The consumer loses the removed units' contribution: its bias gains it back; the BatchNorm after
                # a bias-free consumer sees that much less, so its running mean goes down by as much.
                delta = self.shifts[consumer].to(tensor) * (1.0 if attr == "bias" else -1.0)
                original = tensor.detach().clone()
                tensor.add_(delta)
                handle.folds.append((tensor, original, tensor.detach().clone(), delta))
        return handle


@dataclass
class CompensationHandle:
    """Undoes `Compensation.fold`: exactly (the original tensors) where nothing changed them since, by subtracting
    the fold where training did (so a bias trained while masked keeps what it learned); biases the fold added are
    dropped again and the config flags restored."""

    folds: list = field(default_factory=list, repr=False)
    added: list = field(default_factory=list, repr=False)
    flags: list = field(default_factory=list, repr=False)

    def remove(self) -> None:
        with torch.no_grad():
            for tensor, original, folded, delta in self.folds:
                if torch.equal(tensor, folded):
                    tensor.copy_(original)
                elif tensor.shape == delta.shape:
                    tensor.sub_(delta)
        for module in self.added:
            module.register_parameter("bias", None)
        for config, key, value in self.flags:
            setattr(config, key, value)
        self.folds.clear()
        self.added.clear()
        self.flags.clear()


def _existing(model: nn.Module, targets: dict) -> list[torch.Tensor]:
    """The fold targets (consumer -> (path, attribute, ...)) that exist now: the tensors a fold changes in place."""
    found = (getattr(model.get_submodule(t[0]), t[1], None) for t in targets.values())
    return [tensor for tensor in found if tensor is not None]


def _entries(plan: PruningPlan) -> dict:
    return {name: get_kind(name).to_json(plan.units[name]) for name in plan.kinds() if get_kind(name).compensable}


def _flagged_paths(model: nn.Module, flags) -> set[str]:
    if not flags:
        return set()
    names = {id(m): n for n, m in model.named_modules()}
    adapter = get_adapter(model)
    return {names[id(m)] for flag in flags for m in adapter.bias_flag_modules(model, flag)}


def _enable_biases(model: nn.Module, flags, handle: CompensationHandle) -> None:
    """Turn on each config flag and give every module it governs a zero bias (all layers: the config is plain)."""
    if not flags:
        return
    adapter = get_adapter(model)
    for flag in flags:
        handle.flags.append((model.config, flag, getattr(model.config, flag, None)))
        setattr(model.config, flag, True)
        for module in adapter.bias_flag_modules(model, flag):
            if module.bias is None:
                out = module.weight.shape[0] if isinstance(module, nn.Linear) else module.weight.shape[1]
                module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device),
                                           requires_grad=module.weight.requires_grad)
                handle.added.append(module)


def _sites(model: nn.Module, plan: PruningPlan) -> tuple[dict[str, tuple[str, str, torch.Tensor]], tuple]:
    """Every consumer of the plan's compensable units -> (target path, attribute, removed-input indicator), and the
    config flags that give bias-free consumers their bias."""
    found: dict[str, tuple[str, str, torch.Tensor]] = {}
    flags: set[str] = set()
    adapter = get_adapter(model)
    for name in plan.kinds():
        kind = get_kind(name)
        if not kind.compensable:
            continue
        sites, needed = kind.compensation_sites(model, adapter, plan)
        flags.update(needed)
        for consumer, (path, attr, removed) in sites.items():
            if consumer in found:
                found[consumer][2].copy_(torch.maximum(found[consumer][2], removed))
            else:
                found[consumer] = (path, attr, removed)
    if not found:
        raise ValueError(f"compensate: no layer reading the plan's removed units has a bias or a config flag that "
                         f"gives it one ({model.config.model_type}), so there is nowhere to fold their mean; prune "
                         "without compensate=")
    return found, tuple(sorted(flags))


def _contribution(module: nn.Module, x: torch.Tensor, removed: torch.Tensor,
                  keep: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """Sum over all output positions of what the `removed` input features add to `module`'s output, and the count
    (`keep`: the `[batch, seq]` non-padding tokens of a transformer's input, or `None`)."""
    removed = removed.to(device=x.device, dtype=x.dtype)
    if isinstance(module, nn.Conv2d):
        # The conv itself (padding, stride, groups), so the mean is exact at the borders too.
        y = module._conv_forward(x * removed.view(1, -1, 1, 1), module.weight, None)
        return y.double().sum(dim=(0, 2, 3)), y.numel() // y.shape[1]
    if isinstance(module, nn.Linear):  # features last: (N, C), ConvNeXt's (N, H, W, C), a transformer's (N, T, C)
        y = F.linear(x * removed, module.weight)
    elif type(module).__name__ == "Conv1D":  # transformers' Conv1D: weight (in, out)
        y = (x * removed) @ module.weight
    else:
        raise TypeError(f"compensate: cannot measure a {type(module).__name__} consumer")
    if keep is not None and y.dim() == 3 and tuple(keep.shape) == tuple(y.shape[:2]):
        y = y[keep.to(y.device)]
    y = y.reshape(-1, y.shape[-1])
    return y.double().sum(dim=0), y.shape[0]


class _Stop(Exception):
    """Ends a forward pass once the consumer being measured has run (the layers after it cannot change it)."""


def _batches(dataloader: Iterable, max_batches: int | None, main_input: str, caller: str):
    """The batches as dicts of model inputs (labels dropped); each must hold the model's main input."""
    for index, batch in enumerate(dataloader):
        if max_batches is not None and index >= max_batches:
            return
        if not isinstance(batch, dict) or main_input not in batch:
            got = f"keys {list(batch)}" if isinstance(batch, dict) else type(batch).__name__
            raise ValueError(f"{caller}: every batch must be a dict with {main_input!r} (got {got})")
        yield {k: v for k, v in batch.items() if k != "labels"}


def _mean_contributions(model: nn.Module, batches: Iterable, selected: dict[str, torch.Tensor],
                        stop_after: str | None = None) -> tuple[dict[str, torch.Tensor], list[str], int]:
    """Mean over `batches` of what the `selected` inputs add to each consumer's output, the order in which the
    consumers ran, and the number of batches."""
    sums = {path: [0.0, 0] for path in selected}
    order: list[str] = []
    state: dict = {}

    def measure(path):
        def hook(module, args):
            mask = state["batch"].get("attention_mask")
            total, count = _contribution(module, args[0], selected[path],
                                         mask.bool() if isinstance(mask, torch.Tensor) and mask.dim() == 2 else None)
            sums[path][0] = sums[path][0] + total
            sums[path][1] += count
            if path not in order:
                order.append(path)
            if path == stop_after:
                raise _Stop

        return hook

    device = next(model.parameters()).device
    # prepend: the hooks see the consumers' inputs before any gate
    handles = [model.get_submodule(p).register_forward_pre_hook(measure(p), prepend=True) for p in selected]
    used = 0
    try:
        for batch in batches:
            state["batch"] = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            try:
                model(**state["batch"])
            except _Stop:
                pass
            used += 1
    finally:
        for handle in handles:
            handle.remove()
    if not used:
        raise ValueError("compensation: the dataloader yielded no batch (compensation needs calibration data; there "
                         "is no data-free estimate)")
    missing = [path for path, (_, count) in sums.items() if not count]
    if missing:
        raise ValueError(f"compensation: {missing[0]} never ran on the calibration batches")
    return {p: (total / count).float() for p, (total, count) in sums.items()}, order, used


def measure_compensation(model: nn.Module, plan: PruningPlan, dataloader: Iterable, *,
                         max_batches: int | None = None, sequential: bool = False,
                         caller: str = "measure_compensation") -> Compensation:
    """Measure, on calibration batches, the offsets that keep each consumer's mean output when `plan` is applied.

    The model does not change (eval mode, no gradients; the training mode is restored). Pass the result, or the
    batches themselves, as `compensate=` to `hfprune.prune`, `hfprune.mask` or `hfprune.masked`.

    Args:
        model (`PreTrainedModel`): a model of a supported family, *before* the plan is applied.
        plan (`PruningPlan`): units to remove: CNN channels, or a transformer's heads, FFN neurons and hidden
            channels (FLAP); validated first.
        dataloader (`Iterable[dict]`): batches with `pixel_values` (CNN, ViT) or `input_ids` (an `attention_mask`
            keeps padding out of the means; labels are ignored), e.g. a few hundred training examples.
        max_batches (`int`, *optional*): use at most this many batches.
        sequential (`bool`): `False` (one pass): each offset is the removed units' mean contribution in the
            original model. `True`: consumer by consumer in the order they run, the offset that brings the
            consumer's mean output back to the original one *in the masked model with every earlier offset
            applied*, so it also cancels the mean drift of its kept inputs caused by the removals upstream. One
            pass, plus one pass per consumer that stops at that consumer; the batches are held in memory.

    Returns:
        `Compensation`.

    Raises:
        ValueError: a bad plan, a plan with nothing compensable, a consumer with nowhere to fold into, a batch that
            is not a dict of model inputs, or no batch.

    Example:
        ```python
        >>> comp = hfprune.measure_compensation(model, plan, calibration_batches, max_batches=8)
        >>> with hfprune.masked(model, plan, compensate=comp):
        ...     masked = model(**batch).logits
        >>> hfprune.prune(model, plan, compensate=comp)      # the same offsets: equal to the masked model
        ```
    """
    model = unwrap_model(model)
    plan.validate(model)
    if not _entries(plan):
        raise ValueError(f"{caller}: the plan removes nothing compensable (heads, neurons, hidden channels or CNN "
                         "channels)")
    if max_batches is not None and (isinstance(max_batches, bool) or not isinstance(max_batches, int)
                                    or max_batches < 1):
        raise ValueError(f"{caller}: max_batches must be a positive integer or None, not {max_batches!r}")
    targets, flags = _sites(model, plan)
    removed = {path: t[2] for path, t in targets.items()}
    batches = _batches(dataloader, max_batches, getattr(model, "main_input_name", "input_ids"), caller)
    modes = [(m, m.training) for m in model.modules()]
    with transaction(model) as snapshot:  # an error or Ctrl-C mid-way leaves no gate, hook, fold or bias behind
        snapshot.keep(*_existing(model, targets))
        try:
            model.eval()
            with torch.no_grad():
                shifts, used = _measure(model, plan, batches, targets, removed, sequential)
        finally:
            for module, training in modes:
                module.training = training
    device = next(model.parameters()).device
    groups = channel_groups(model) if plan.channels else {}
    return Compensation(
        units=_entries(plan),
        sizes={name: groups[name].size for name in plan.channels},
        shifts={p: v.to(device) for p, v in shifts.items()},
        targets={p: (t[0], t[1]) for p, t in targets.items()},
        num_batches=used,
        bias_flags=flags,
        structure={} if plan.channels else model_structure(model),
    )


def _measure(model, plan, batches, targets, removed, sequential) -> tuple[dict[str, torch.Tensor], int]:
    if not sequential:
        shifts, _, used = _mean_contributions(model, batches, removed)
        return shifts, used
    batches = list(batches)
    full, order, used = _mean_contributions(model, batches, {p: torch.ones_like(r) for p, r in removed.items()})
    shifts = {p: torch.zeros_like(v) for p, v in full.items()}
    flags = tuple(sorted({f for f in _sites(model, plan)[1]}))
    draft = Compensation({}, {}, shifts, {p: t[:2] for p, t in targets.items()}, used, flags)
    gates = attach(model, get_adapter(model), {name: True for name in plan.kinds()}, plan)
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
    return shifts, used


def channel_compensation(model: nn.Module, plan: PruningPlan, dataloader: Iterable, *,
                         max_batches: int | None = None, sequential: bool = False) -> Compensation:
    """`measure_compensation` for a CNN channel plan (`PruningPlan(channels=...)`, batches with `pixel_values`).

    Example:
        ```python
        >>> comp = hfprune.channel_compensation(model, plan, train_batches, max_batches=8)
        >>> hfprune.prune(model, plan, compensate=comp)
        ```
    """
    if not plan.channels:
        raise ValueError("channel_compensation: the plan removes no channels (PruningPlan(channels=...))")
    return measure_compensation(model, plan, dataloader, max_batches=max_batches, sequential=sequential,
                                caller="channel_compensation")


def resolve_compensation(model: nn.Module, plan: PruningPlan, compensate) -> Compensation | None:
    """`compensate=` of prune / mask: None, a `Compensation` (checked) or batches (measured now)."""
    if compensate is None:
        return None
    if not _entries(plan):
        raise ValueError("compensate= applies to plans that remove heads, FFN neurons, hidden channels or CNN "
                         "channels")
    if isinstance(compensate, Compensation):
        compensate.check(model, plan)
        return compensate
    if isinstance(compensate, (bool, str, bytes, dict)) or not isinstance(compensate, Iterable):
        raise TypeError("compensate= takes calibration batches (an iterable of dicts of model inputs; a single "
                        f"batch goes in a list) or a Compensation, not {type(compensate).__name__}; there is no "
                        "data-free estimate")
    caller = "channel_compensation" if plan.channels else "measure_compensation"
    return measure_compensation(model, plan, compensate, caller=caller)
