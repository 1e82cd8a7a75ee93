"""ResNet (basic and bottleneck blocks) as channel groups: inner block channels free, each stage's width coupled.

Layout (transformers v5): `resnet.embedder.embedder` (stem conv + BN), `resnet.encoder.stages.S.layers.B` with
`layer.N` conv layers (`convolution`, `normalization`) and a `shortcut` (projection conv + BN, or `Identity`), and
`classifier.1` (`Sequential(Flatten, Linear)`).
"""

from __future__ import annotations

from torch import nn

from .channels import ChannelAdapter, GroupBuilder, join
from .registry import register


@register
class ResNetAdapter(ChannelAdapter):
    model_types = ("resnet",)
    base_prefixes = ("resnet",)
    stem_path = "embedder.embedder"

    def build_groups(self, model: nn.Module) -> list[GroupBuilder]:
        base = self.base_prefix(model)
        stem = join(base, self.stem_path)
        stream = _conv_group(stem)
        groups = [stream]
        for s, stage in enumerate(model.get_submodule(join(base, "encoder.stages"))):
            for b, block in enumerate(stage.layers):
                prefix = join(base, f"encoder.stages.{s}.layers.{b}")
                inner = self.inner_groups(prefix, block)
                stream.add("in", f"{prefix}.layer.0.convolution", norm=f"{prefix}.layer.0.normalization")
                if not isinstance(block.shortcut, nn.Identity):
                    # A projection shortcut starts a new residual stream: its width is decoupled from the input's.
                    stream.add("in", f"{prefix}.shortcut.convolution", norm=f"{prefix}.shortcut.normalization")
                    stream = _conv_group(f"{prefix}.shortcut")
                    groups.append(stream)
                groups.extend(inner)
                last = f"{prefix}.layer.{len(block.layer) - 1}"
                stream.add("out", f"{last}.convolution").add("norm", f"{last}.normalization")
        stream.head(self.classifier_path(model))
        return groups

    def inner_groups(self, prefix: str, block: nn.Module) -> list[GroupBuilder]:
        """Each conv's output except the last one's, consumed by the next conv (basic: 1 group, bottleneck: 2)."""
        convs = [f"{prefix}.layer.{i}" for i in range(len(block.layer))]
        return [_conv_group(a).add("in", f"{b}.convolution", norm=f"{b}.normalization")
                for a, b in zip(convs, convs[1:])]

    def config_updates(self, model: nn.Module, groups) -> dict:
        base = self.base_prefix(model)
        stem = model.get_submodule(join(base, self.stem_path)).convolution
        stages = model.get_submodule(join(base, "encoder.stages"))
        return {"embedding_size": stem.out_channels,
                "hidden_sizes": [stage.layers[-1].layer[-1].convolution.out_channels for stage in stages]}


def _conv_group(conv_layer: str) -> GroupBuilder:
    """A group produced by a `convolution` + `normalization` pair (the conv layer of ResNet and RegNet)."""
    return GroupBuilder(f"{conv_layer}.convolution").add("out", f"{conv_layer}.convolution") \
        .add("norm", f"{conv_layer}.normalization")
