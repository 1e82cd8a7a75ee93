"""`reap` for experts: router-weighted expert activation (Lasby et al. 2025, "REAP the Experts: Why Pruning Prevails
for One-Shot MoE compression", CerebrasResearch/reap).

S_j = mean, over the calibration tokens routed to expert j, of g_j(x) * ||E_j(x)||_2, where g_j(x) is the weight the
model multiplies the expert's output by (top-k probability, renormalised where the family renormalises) and E_j(x)
the expert's unweighted output; 0 for an expert that received no token. Forward only, block by block.
"""

from __future__ import annotations

import torch

from . import register_criterion
from ._routing import routing_stats


@register_criterion("reap", units=("experts",), needs="forward", order=10,
                    summary="mean over routed tokens of gate value x expert output norm (REAP, Lasby 2025)")
def reap(model, dataloader=None, *, max_batches=None, distributed=True, **common) -> dict[int, torch.Tensor]:
    stats = routing_stats(model, dataloader, max_batches=max_batches, distributed=distributed)
    return {layer: (s.reap / s.routed.clamp(min=1)) for layer, s in stats.items()}
