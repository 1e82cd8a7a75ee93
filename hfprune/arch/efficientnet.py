"""EfficientNet as channel groups: each MBConv block's expanded channels (expand 1x1 out, depthwise 1:1, SE
reduce in / expand out, project 1x1 in) are free; projections joined by a residual form a coupled group.

Layout (transformers v5): `efficientnet.embeddings` (`convolution`, `batchnorm`), `efficientnet.encoder.blocks.N`
(`expansion.expand_conv/expand_bn` when `expand`, `depthwise_conv.depthwise_conv/depthwise_norm`,
`squeeze_excite.reduce/expand`, `projection.project_conv/project_bn`, residual when `projection.apply_dropout`),
`encoder.top_conv/top_bn`, and `classifier`.
"""

from __future__ import annotations

from torch import nn

from .channels import ChannelAdapter, GroupBuilder, join
from .registry import register


def _new(conv: str, norm: str) -> GroupBuilder:
    return GroupBuilder(conv).add("out", conv).add("norm", norm)


@register
class EfficientNetAdapter(ChannelAdapter):
    model_types = ("efficientnet",)
    base_prefixes = ("efficientnet",)

    def build_groups(self, model: nn.Module) -> list[GroupBuilder]:
        base = self.base_prefix(model)
        stream = _new(join(base, "embeddings.convolution"), join(base, "embeddings.batchnorm"))
        groups = [stream]
        for i, block in enumerate(model.get_submodule(join(base, "encoder.blocks"))):
            p = join(base, f"encoder.blocks.{i}")
            if block.expand:
                stream.add("in", f"{p}.expansion.expand_conv", norm=f"{p}.expansion.expand_bn")
                inner = _new(f"{p}.expansion.expand_conv", f"{p}.expansion.expand_bn")
                groups.append(inner)
            else:  # no expansion: the depthwise conv and SE act on the block's input channels themselves
                inner = stream
            inner.add("through", f"{p}.depthwise_conv.depthwise_conv").add("norm", f"{p}.depthwise_conv.depthwise_norm")
            inner.add("in", f"{p}.squeeze_excite.reduce").add("scale", f"{p}.squeeze_excite.expand")
            inner.add("in", f"{p}.projection.project_conv", norm=f"{p}.projection.project_bn")
            if block.projection.apply_dropout:  # residual: the projection adds into the stream it read
                stream.add("out", f"{p}.projection.project_conv").add("norm", f"{p}.projection.project_bn")
            else:
                stream = _new(f"{p}.projection.project_conv", f"{p}.projection.project_bn")
                groups.append(stream)
        stream.add("in", join(base, "encoder.top_conv"), norm=join(base, "encoder.top_bn"))
        top = _new(join(base, "encoder.top_conv"), join(base, "encoder.top_bn"))
        groups.append(top.head(self.classifier_path(model)))
        return groups
