"""`bn_scale` for channels: |gamma| of the BatchNorm over each channel (summed over a group's norms).

Paper: Liu et al., 2017, "Learning Efficient Convolutional Networks through Network Slimming" (train with an L1
penalty on gamma, `hfprune.NetworkSlimmingCallback`, then remove the smallest |gamma| under one global threshold:
`select_channels(scores, scope="global")`).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_criterion


@register_criterion("bn_scale", units=("channels",), order=10,
                    summary="|BatchNorm gamma| per channel, summed over a coupled group's norms (Liu et al. 2017)")
def bn_scale_channels(model: nn.Module, dataloader=None, *, groups, **common) -> dict[str, torch.Tensor]:
    """Raises `ValueError` naming the first group without a BatchNorm (ConvNeXt: use l1, magnitude or taylor)."""
    scores = {}
    for name, group in groups.items():
        norms = [model.get_submodule(p) for p in group.paths("norm")]
        norms = [m for m in norms if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
        if not norms:
            raise ValueError(f"criterion 'bn_scale': channel group {name!r} has no BatchNorm with a scale (gamma); "
                             "use criterion='l1', 'magnitude' or 'taylor' for it")
        scores[name] = sum(m.weight.detach().abs().float().cpu() for m in norms)
    return scores
