"""`taylor` for channels: first-order Taylor estimate of the loss change when a channel is removed.

Paper: Molchanov et al., 2017, "Pruning Convolutional Neural Networks for Resource Efficient Inference". The score of
channel c is |dL/dg_c| for a gate g (= 1) on the channel at the input of every layer that consumes it, i.e.
|sum over positions of activation * gradient|, accumulated over batches (one shared gate per coupled group, so its
gradient sums over the group's consumers).
"""

from __future__ import annotations

import torch
from torch import nn

from . import register_criterion


@register_criterion("taylor", units=("channels",), needs="gradients", needs_labels=True,
                    summary="|activation x gradient| per channel (Molchanov et al. 2017)")
def taylor_channels(model: nn.Module, dataloader, *, groups, max_batches=None, num_samples=None,
                    show_progress=False, **common) -> dict[str, torch.Tensor]:
    from ..masking import attach_gates
    from ..passes import check_model, iter_batches, model_loss, scoring_mode

    device = check_model(model)
    totals = {name: torch.zeros(group.size) for name, group in groups.items()}
    with scoring_mode(model), torch.enable_grad():
        gates = attach_gates(model, channels=list(groups), requires_grad=True)
        try:
            for index, batch in enumerate(iter_batches(dataloader, device, max_batches=max_batches,
                                                       num_samples=num_samples, show_progress=show_progress,
                                                       desc="channel taylor")):
                model_loss(model(**batch), index).backward()
                for name, gate in gates.channel_gates.items():
                    totals[name] += gate.grad.detach().abs().float().cpu()
                gates.zero_grad()
        finally:
            gates.remove()
    return totals
