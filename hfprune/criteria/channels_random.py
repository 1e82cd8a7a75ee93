"""`random` for channels: uniform random scores from `seed` (the baseline every criterion must beat)."""

from __future__ import annotations

import torch
from torch import nn

from . import register_criterion


@register_criterion("random", units=("channels",), needs_seed=True, order=90,
                    summary="uniform random scores (a baseline; needs seed)")
def random_channels(model: nn.Module, dataloader=None, *, groups, seed: int, **common) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(int(seed))
    return {name: torch.rand(group.size, generator=generator) for name, group in groups.items()}
