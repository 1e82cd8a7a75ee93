"""`magnitude` for channels: the L2 norm of every weight a channel owns (producer rows, pass-through filters, SE
rows and consumer columns), e.g. ConvNeXt's inner MLP channels: `pwconv1` row + `pwconv2` column.

Paper: the weight-magnitude baseline of Han et al., 2015, applied per structured unit.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_criterion


def _sq_rows(module: nn.Module, dim: int) -> torch.Tensor:
    weight = module.weight.detach().float().cpu()
    return weight.transpose(0, dim).pow(2).flatten(1).sum(1)


@register_criterion("magnitude", units=("channels",),
                    summary="L2 norm of all weights a channel owns (producers, pass-through, consumers)")
def magnitude_channels(model: nn.Module, dataloader=None, *, groups, **common) -> dict[str, torch.Tensor]:
    scores = {}
    for name, group in groups.items():
        total = torch.zeros(group.size)
        for op in group.ops:
            if op.kind == "norm":
                continue
            total += _sq_rows(model.get_submodule(op.path), 1 if op.kind == "in" else 0)
        scores[name] = total.sqrt()
    return scores
