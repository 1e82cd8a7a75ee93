"""Layer importance by ablation: how much the loss (or a metric) suffers when a whole block is skipped.

Follows the LayerDrop view of Fan et al. (2020), "Reducing Transformer Depth on Demand with Structured Dropout"
(ICLR 2020): skip one block at a time (the residual stream passes through it) and measure the increase of the
token-weighted mean loss: one forward per layer per batch, under `torch.no_grad`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..arch import get_adapter
from ..masking import attach_gates
from ..passes import TokenCounter, check_model, iter_batches, model_loss, scoring_mode, sum_per_token
from . import register_criterion


@register_criterion("ablation", units=("layers",), order=10, needs="forward",
                    summary="loss increase when the block is skipped (Fan et al., 2020); metric_fn= for a metric")
def ablation_layers(model: nn.Module, dataloader: Iterable, *, metric_fn: Callable | None = None, max_batches=None,
                    num_samples=None, show_progress=True, distributed=True, **common) -> torch.Tensor:
    """`metric_fn(outputs, batch) -> float` (higher is better): score its drop instead of the loss increase; then
    the batches need no labels (so this criterion does not declare `needs_labels`)."""
    device = check_model(model, needs_grad=False)
    adapter = get_adapter(model)
    n_layers = len(adapter.layers(model))
    # Slot 0 is the full model, slot l + 1 the model without block l; each holds a weighted sum and its weight.
    sums = torch.zeros(n_layers + 1, dtype=torch.float64)
    weight = 0.0
    limits = {"max_batches": max_batches, "num_samples": num_samples, "show_progress": show_progress}
    with scoring_mode(model), torch.no_grad():
        gates = attach_gates(model, layers=True)
        counter = TokenCounter(model, adapter)
        try:
            for index, batch in enumerate(iter_batches(dataloader, device, need_labels=metric_fn is None,
                                                       desc="layer importance (ablation)", **limits)):
                tokens = None
                for slot in range(n_layers + 1):
                    if slot:
                        gates.layer_gates[slot - 1].fill_(0.0)
                    try:
                        outputs = model(**batch)
                        if tokens is None:
                            tokens = counter.count(batch)
                        if metric_fn is None:
                            sums[slot] += float(model_loss(outputs, index)) * tokens
                        else:
                            sums[slot] += float(metric_fn(outputs, batch)) * tokens
                    finally:
                        if slot:
                            gates.layer_gates[slot - 1].fill_(1.0)
                weight += tokens
        finally:
            counter.remove()
            gates.remove()
    (mean,), _ = sum_per_token([sums], weight, distributed)
    change = mean[1:] - mean[0]
    # A metric (higher is better) drops when an important layer goes; the loss rises.
    return (change if metric_fn is None else -change).float()
