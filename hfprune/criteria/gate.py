"""Layer importance by a layer gate: the first-order estimate of the loss change when a block is skipped.

|dL/dg_l| for a gate g_l that blends the block's output with its input, summed over batches and divided by the
number of non-padding tokens, as Michel et al. (2019) do for heads; one forward + backward per batch. The
ablation it estimates is Fan et al. (2020), "Reducing Transformer Depth on Demand with Structured Dropout".
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from ..passes import BatchView, gated_passes, sum_per_token
from . import register_criterion


@register_criterion("gate", units=("layers",), order=20, needs="gradients", needs_labels=True,
                    summary="|dL/dg| of a gate blending each block's output with its input (one backward per batch)")
def gate_layers(model: nn.Module, dataloader: Iterable, *, max_batches=None, num_samples=None, show_progress=True,
                distributed=True, **common) -> torch.Tensor:
    sums: dict[int, torch.Tensor] = {}

    def on_batch(view: BatchView) -> None:
        for layer, gate in view.gates.layer_gates.items():
            grad = gate.grad.detach().abs().double().reshape(1)
            sums[layer] = sums[layer] + grad if layer in sums else grad

    tokens = gated_passes(model, dataloader, units="layers", on_batch=on_batch, desc="layer importance (gate)",
                          max_batches=max_batches, num_samples=num_samples, show_progress=show_progress)
    layers = sorted(sums)
    means, _ = sum_per_token([sums[i] for i in layers], tokens, distributed)
    return torch.cat(means).float().cpu()

