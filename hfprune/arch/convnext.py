"""ConvNeXt as channel groups: each block's inner MLP channels (`pwconv1` out, `pwconv2` in) are free; the stage
widths are listed but not prunable (a LayerNorm normalises over them).

Layout (transformers v5): `convnext.embeddings.patch_embeddings`, `convnext.encoder.stages.S` with
`downsampling_layer.1` (conv, stages > 0) and `layers.B` (`dwconv`, `layernorm`, `pwconv1`, `pwconv2` as Linear).
"""

from __future__ import annotations

from torch import nn

from .channels import ChannelAdapter, GroupBuilder, join
from .registry import register

_LAYERNORM = ("a LayerNorm normalises over these channels, so removing one changes every other channel's output "
              "(masking and removal would differ); only the inner MLP channels of each block are prunable")


@register
class ConvNextAdapter(ChannelAdapter):
    model_types = ("convnext",)
    base_prefixes = ("convnext",)

    def build_groups(self, model: nn.Module) -> list[GroupBuilder]:
        base = self.base_prefix(model)
        groups = []
        for s, stage in enumerate(model.get_submodule(join(base, "encoder.stages"))):
            producer = join(base, "embeddings.patch_embeddings") if s == 0 else \
                join(base, f"encoder.stages.{s}.downsampling_layer.1")
            width = GroupBuilder(producer).add("out", producer)
            width.reason = _LAYERNORM
            groups.append(width)
            for b in range(len(stage.layers)):
                p = join(base, f"encoder.stages.{s}.layers.{b}")
                groups.append(GroupBuilder(f"{p}.pwconv1").add("out", f"{p}.pwconv1").add("in", f"{p}.pwconv2"))
        return groups
