"""`router_weight` for experts: the mean over all calibration tokens of the expert's applied gate value (0 where
it is not routed): the soft counterpart of `frequency`."""

from __future__ import annotations

import torch

from . import register_criterion
from ._routing import routing_stats


@register_criterion("router_weight", units=("experts",), needs="forward", order=30,
                    summary="mean applied gate value over all tokens (soft frequency)")
def router_weight(model, dataloader=None, *, max_batches=None, distributed=True,
                  **common) -> dict[int, torch.Tensor]:
    stats = routing_stats(model, dataloader, max_batches=max_batches, distributed=distributed)
    return {layer: (s.gate / s.tokens) for layer, s in stats.items()}
