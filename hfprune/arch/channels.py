"""The channel contract for vision CNNs: which channels can be removed together, and every tensor they touch.

A CNN family adapter (`ChannelAdapter`) describes its model as channel groups, in the spirit of Torch-Pruning's
dependency groups (Fang et al., 2023, "DepGraph: Towards Any Structural Pruning"), but written down per family
instead of traced: a group is a set of channels that exist in several tensors at once, and removing channel `i`
of the group removes index `i` from every one of them:

* `out`: a convolution / linear layer producing the channels (weight rows, bias);
* `norm`: a BatchNorm2d over them (weight, bias, running_mean, running_var);
* `through`: a depthwise or grouped convolution they pass through 1:1 (grouped: in whole groups);
* `in`: a convolution / linear layer consuming them (weight columns); masks gate these inputs; `norm` names the
  BatchNorm that normalises this consumer's output, where removed-channel compensation goes when the consumer has
  no bias (`hfprune.compensation`);
* `scale`: a squeeze-and-excitation expand convolution whose output rows scale them (rows sliced, not a producer).

A group with several producers (a residual path: every block's last conv adds into the same stream) is *coupled*
and is selected and removed as one unit. Groups are named by the module path of their first producing convolution.
Only the modules in `hfprune.arch` build these descriptions; masking, surgery and scoring only read them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from .base import ArchAdapter
from .registry import adapters_for, get_adapter, unwrap_model

OP_KINDS = ("out", "norm", "through", "in", "scale")


@dataclass(frozen=True)
class ChannelOp:
    """One tensor the group's channels live in: `kind` (see the module docstring) and the module's path.

    For an `in` op, `norm` is the path of the BatchNorm right after the consumer (`None`: the consumer has a bias,
    or nothing normalises its output); removed-channel compensation shifts that norm's running mean.
    """

    kind: str
    path: str
    norm: str | None = None


@dataclass(frozen=True)
class ChannelGroup:
    """Channels that are removed together.

    Args:
        size (`int`): the number of channels the group has now.
        coupled (`bool`): several producers are summed into these channels (a residual path): one unit of selection.
        members (`tuple[str]`): the module path of every module whose weights the group touches.
        prunable (`bool`): whether hfprune can remove channels of this group; `reason` says why not.
        reason (`str`): why a group is not prunable (empty when it is).
        granularity (`int`): channels go in whole runs of this many (grouped convolutions: the group width).
        ops (`tuple[ChannelOp]`): what surgery slices and where masks gate, in model order.

    Example:
        ```python
        >>> from hfprune.arch.channels import ChannelGroup
        >>> ChannelGroup(size=16, coupled=False, members=("conv1", "bn1", "conv2")).prunable
        True
        ```
    """

    size: int
    coupled: bool
    members: tuple[str, ...]
    prunable: bool = True
    reason: str = ""
    granularity: int = 1
    ops: tuple[ChannelOp, ...] = field(default=(), repr=False, compare=False)

    def paths(self, kind: str) -> list[str]:
        return [op.path for op in self.ops if op.kind == kind]

    def consumers(self) -> list[ChannelOp]:
        """The `in` ops: every layer that reads these channels (and the BatchNorm after it, if any)."""
        return [op for op in self.ops if op.kind == "in"]


class GroupBuilder:
    """Collects the ops of one group while an adapter walks its model (a mutable draft of a `ChannelGroup`)."""

    def __init__(self, name: str):
        self.name = name
        self.ops: list[ChannelOp] = []
        self.granularity = 1
        self.reason = ""

    def add(self, kind: str, *paths: str | None, norm: str | None = None) -> GroupBuilder:
        """Add ops of one kind; `norm` (an `in` op only): the BatchNorm that follows that consumer."""
        if kind not in OP_KINDS:
            raise ValueError(f"unknown channel op {kind!r}; expected one of {OP_KINDS}")
        if norm is not None and (kind != "in" or len(paths) != 1):
            raise ValueError("norm= names the BatchNorm after one consumer: it goes with a single `in` op")
        self.ops.extend(ChannelOp(kind, p, norm) for p in paths if p is not None)
        return self

    def head(self, classifier: str | None) -> GroupBuilder:
        """The model's last width: consumed by the classifier, or (a base model) the model's output itself."""
        if classifier is None:
            self.reason = ("these channels are the model's output (last_hidden_state / pooler_output); no "
                           "classifier consumes them")
        return self.add("in", classifier)

    def freeze(self, model: nn.Module) -> ChannelGroup:
        first = model.get_submodule(next(op.path for op in self.ops if op.kind == "out"))
        size = int(first.weight.shape[0])
        coupled = sum(op.kind == "out" for op in self.ops) > 1
        members = tuple(dict.fromkeys(op.path for op in self.ops))
        if not self.reason and not any(op.kind == "in" for op in self.ops):
            self.reason = "no layer consumes these channels: they are the model's output"
        return ChannelGroup(size, coupled, members, not self.reason, self.reason, self.granularity, tuple(self.ops))


class ChannelAdapter(ArchAdapter):
    """Base class of CNN family adapters: their one unit kind is `channels`, described as channel groups.

    Subclasses set `model_types` and `base_prefixes` and implement `build_groups`; `config_updates` says which plain
    config keys can express the current widths (checked by rebuilding the model from the updated config).
    """

    unit_kinds = ("channels",)
    family = "a CNN"
    base_prefixes: tuple[str, ...] = ()

    def base_prefix(self, model: nn.Module) -> str:
        """The path of the backbone inside `model` ("" when `model` is the backbone itself)."""
        for prefix in self.base_prefixes:
            try:
                model.get_submodule(prefix)
                return prefix
            except AttributeError:
                continue
        return ""

    def build_groups(self, model: nn.Module) -> list[GroupBuilder]:
        raise NotImplementedError

    def config_updates(self, model: nn.Module, groups: dict[str, ChannelGroup]) -> dict:
        """Plain config keys and values that describe the model's current widths (empty: none can)."""
        return {}

    def classifier_path(self, model: nn.Module, path: str = "classifier") -> str | None:
        """The classifier's input `nn.Linear` (inside a `Sequential(Flatten, Linear)` too), if there is one."""
        try:
            module = model.get_submodule(path)
        except AttributeError:
            return None
        if isinstance(module, nn.Linear):
            return path
        if isinstance(module, nn.Sequential):
            for name, child in module.named_children():
                if isinstance(child, nn.Linear):
                    return f"{path}.{name}"
        return None


def join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def channel_groups(model: nn.Module) -> dict[str, ChannelGroup]:
    """Every channel group of a CNN, by name (the module path of the convolution that produces it).

    Inner channels of a block are free groups; the channels of a residual path (a stage's width) form one coupled
    group; groups hfprune cannot remove (a LayerNorm over them, the model's output) are listed with
    `prunable=False` and the reason.

    Args:
        model (`PreTrainedModel`): a model of a supported CNN family (resnet, regnet, mobilenet_v2, efficientnet,
            convnext).

    Returns:
        `dict[str, ChannelGroup]`, in model order.

    Raises:
        ValueError: the model is not a supported CNN (the message names the supported ones).

    Example:
        ```python
        >>> import hfprune
        >>> from transformers import ResNetConfig, ResNetForImageClassification
        >>> model = ResNetForImageClassification(ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
        ...                                                    layer_type="basic"))
        >>> groups = hfprune.channel_groups(model)
        >>> groups["resnet.encoder.stages.0.layers.0.layer.0.convolution"].coupled
        False
        ```
    """
    model = unwrap_model(model)  # DDP / torch.compile wrappers: group names as the model itself has them
    adapter = channel_adapter(model)
    return {g.name: g.freeze(model) for g in adapter.build_groups(model)}


def channel_adapter(model: nn.Module) -> ChannelAdapter:
    """The model's `ChannelAdapter`; a clear error for transformers and unsupported families."""
    adapter = get_adapter(model)
    if not isinstance(adapter, ChannelAdapter):
        raise ValueError(f"model_type={model.config.model_type!r} has no channel groups (channel pruning supports "
                         f"the CNN families {', '.join(adapters_for('channels'))}; prune its "
                         f"{' / '.join(adapter.unit_kinds)} instead)")
    return adapter
