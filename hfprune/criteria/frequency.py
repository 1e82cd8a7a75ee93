"""`frequency` for experts: the share of calibration tokens routed to the expert (sums to top-k per layer)."""

from __future__ import annotations

import torch

from . import register_criterion
from ._routing import routing_stats


@register_criterion("frequency", units=("experts",), needs="forward", order=20,
                    summary="share of tokens routed to the expert (activation frequency)")
def frequency(model, dataloader=None, *, max_batches=None, distributed=True, **common) -> dict[int, torch.Tensor]:
    stats = routing_stats(model, dataloader, max_batches=max_batches, distributed=distributed)
    return {layer: (s.routed / s.tokens) for layer, s in stats.items()}
