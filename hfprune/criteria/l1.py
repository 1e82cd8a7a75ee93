"""`l1` for channels: the L1 norm of each channel's filters in the convolutions that produce it.

Paper: Li et al., 2017, "Pruning Filters for Efficient ConvNets" (sum of absolute kernel weights per output filter;
per layer: `select_channels(scores, scope="layer")`). A coupled group sums its producers' filters; a depthwise
convolution the channel passes through adds its own filter.
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_criterion


def filter_l1(module: nn.Module) -> torch.Tensor:
    weight = module.weight.detach().float().cpu()
    return weight.abs().flatten(1).sum(1)


@register_criterion("l1", units=("channels",), order=20, summary="L1 norm of each channel's filters (Li et al. 2017)")
def l1_channels(model: nn.Module, dataloader=None, *, groups, **common) -> dict[str, torch.Tensor]:
    return {name: sum(filter_l1(model.get_submodule(p)) for p in group.paths("out") + group.paths("through"))
            for name, group in groups.items()}
