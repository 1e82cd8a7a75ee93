"""RegNet (X and Y) as channel groups: like ResNet, but a block's inner channels pass a grouped 3x3 convolution
(so they go in whole groups of `groups_width`) and, in RegNet-Y, a squeeze-and-excitation block.

Layout (transformers v5): `regnet.embedder.embedder`, `regnet.encoder.stages.S.layers.B.layer` = [1x1 conv layer,
grouped 3x3 conv layer, (Y: `RegNetSELayer` with `attention.0` reduce / `attention.2` expand), 1x1 conv layer].
"""

from __future__ import annotations

from torch import nn

from .channels import GroupBuilder
from .registry import register
from .resnet import ResNetAdapter, _conv_group


@register
class RegNetAdapter(ResNetAdapter):
    model_types = ("regnet",)
    base_prefixes = ("regnet",)

    def inner_groups(self, prefix: str, block: nn.Module) -> list[GroupBuilder]:
        n = len(block.layer)
        first, grouped, last = f"{prefix}.layer.0", f"{prefix}.layer.1", f"{prefix}.layer.{n - 1}"
        group = _conv_group(first).add("through", f"{grouped}.convolution").add("norm", f"{grouped}.normalization")
        if n == 4:  # RegNet-Y: the SE block between the grouped conv and the last 1x1
            group.add("in", f"{prefix}.layer.2.attention.0").add("scale", f"{prefix}.layer.2.attention.2")
        group.add("in", f"{last}.convolution", norm=f"{last}.normalization")
        conv = block.layer[1].convolution
        group.granularity = conv.out_channels // conv.groups
        return [group]
