"""MobileNetV2 as channel groups: each inverted residual's expanded channels (expand 1x1 out, depthwise 1:1,
project 1x1 in) are free; projections joined by a residual connection form a coupled group.

Layout (transformers v5): `mobilenet_v2.conv_stem` (`first_conv`, optional `expand_1x1`, `conv_3x3` depthwise,
`reduce_1x1`), `mobilenet_v2.layer.N` (`expand_1x1`, `conv_3x3`, `reduce_1x1`, `use_residual`), `conv_1x1`, and
`classifier`; every conv layer holds `convolution` and an optional `normalization`.
"""

from __future__ import annotations

from torch import nn

from .channels import ChannelAdapter, GroupBuilder, join
from .registry import register


def _add(model: nn.Module, group: GroupBuilder, kind: str, conv_layer: str) -> GroupBuilder:
    norm = f"{conv_layer}.normalization" if model.get_submodule(conv_layer).normalization is not None else None
    if kind == "in":  # a consumer: its own BatchNorm (if any) is where removed-channel compensation goes
        return group.add(kind, f"{conv_layer}.convolution", norm=norm)
    return group.add(kind, f"{conv_layer}.convolution").add("norm", norm)


@register
class MobileNetV2Adapter(ChannelAdapter):
    model_types = ("mobilenet_v2",)
    base_prefixes = ("mobilenet_v2",)

    def build_groups(self, model: nn.Module) -> list[GroupBuilder]:
        base = self.base_prefix(model)
        new = lambda conv_layer: _add(model, GroupBuilder(f"{conv_layer}.convolution"), "out", conv_layer)  # noqa: E731
        stem = join(base, "conv_stem")
        group = new(f"{stem}.first_conv")
        groups = [group]
        if model.get_submodule(stem).expand_1x1 is not None:
            _add(model, group, "in", f"{stem}.expand_1x1")
            group = new(f"{stem}.expand_1x1")
            groups.append(group)
        _add(model, group, "through", f"{stem}.conv_3x3")
        _add(model, group, "in", f"{stem}.reduce_1x1")
        stream = new(f"{stem}.reduce_1x1")
        groups.append(stream)
        for i, block in enumerate(model.get_submodule(join(base, "layer"))):
            prefix = join(base, f"layer.{i}")
            _add(model, stream, "in", f"{prefix}.expand_1x1")
            inner = new(f"{prefix}.expand_1x1")
            _add(model, inner, "through", f"{prefix}.conv_3x3")
            groups.append(_add(model, inner, "in", f"{prefix}.reduce_1x1"))
            if block.use_residual:  # the projection adds into the stream it read
                _add(model, stream, "out", f"{prefix}.reduce_1x1")
            else:
                stream = new(f"{prefix}.reduce_1x1")
                groups.append(stream)
        top = join(base, "conv_1x1")
        _add(model, stream, "in", top)
        groups.append(new(top).head(self.classifier_path(model)))
        return groups
