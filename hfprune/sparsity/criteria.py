"""Weight importance for weight-level pruning: the criteria registered for "weights" in `hfprune.criteria`.

The criteria live there, one module each (`magnitude` |w|, Han et al. 2015; `taylor` |w * dL/dw|, Molchanov et al.
2019; `random`, the baseline); this module looks one up and calls it with the targets. Scorers never change
weights; `requires_grad` and train/eval mode are restored on exit, also on error.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from ..criteria import get_criterion
from .targets import Target


def compute_scores(model: nn.Module, targets: list[Target], criterion: str, dataloader: Iterable | None = None,
                   max_batches: int | None = None, seed: int = 0,
                   options: Mapping | None = None) -> dict[str, torch.Tensor]:
    """Target name -> importance shaped like its weight, from the weight criterion `criterion`."""
    found = get_criterion(criterion, "weights", caller="sparsify")
    return found.fn(model, dataloader, targets=targets, max_batches=max_batches, seed=seed, **dict(options or {}))
