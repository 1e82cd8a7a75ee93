"""Per-batch gradients of head and FFN-neuron masks: the statistics every step of the budget search reads.

Kwon et al. (2022), "A Fast Post-Training Pruning Framework for Transformers", Section 4.1: with a mask variable
m on every head and neuron (1 = kept), the loss increase of removing a set of units is estimated from the empirical
Fisher of the masks, built from the gradient dL/dm of each calibration batch. The diagonal (the sum of squared
per-batch gradients) ranks units in the mask search; the per-batch vectors themselves give the block-diagonal
Fisher of one layer used by the rearrangement.

The masks are hfprune's own gates (`hfprune.attach_gates(..., requires_grad=True)`): heads at the input of the
attention output projection, neurons at the input of the down projection; no `head_mask` argument is needed. The
pass is `hfprune.passes.gated_passes` over heads and neurons at once.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import BatchView, gated_passes, gather_rows, is_distributed


@dataclass
class MaskGradients:
    """Per-batch mask gradients, one `[num_batches, units]` float64 matrix per layer and unit kind.

    Attributes:
        heads (`list[torch.Tensor]`): layer -> `[num_batches, num_heads]`.
        neurons (`list[torch.Tensor]`): layer -> `[num_batches, intermediate_size]`.
        num_batches (`int`): batches seen, summed over processes.
    """

    heads: list[torch.Tensor]
    neurons: list[torch.Tensor]
    num_batches: int

    def head_fisher(self) -> list[torch.Tensor]:
        """Diagonal Fisher of every head mask: the sum over batches of the squared gradient."""
        return [g.pow(2).sum(0) for g in self.heads]

    def neuron_fisher(self) -> list[torch.Tensor]:
        """Diagonal Fisher of every neuron mask."""
        return [g.pow(2).sum(0) for g in self.neurons]


def collect_mask_gradients(model: nn.Module, batches: list[dict], *, show_progress: bool = False,
                           distributed: bool = True) -> MaskGradients:
    """One forward + backward of the model's own loss per batch, keeping dL/dm for every head and neuron mask.

    The model runs in eval mode with its weights frozen (gradients reach only the gates); weights, `requires_grad`
    and training flags are as before on return. Under torch.distributed the per-batch rows of every process are
    gathered (in rank order), so each process holds the same matrices as one process that saw all the batches.

    Args:
        model (`PreTrainedModel`): a model of a supported family.
        batches (`list[dict]`): batches with `labels` (see `hfprune.passes.prepare_batches`).
        distributed (`bool`, defaults to `True`): gather over processes when torch.distributed is initialised.
    """
    num_layers = len(get_adapter(model).layers(model))
    rows = {kind: [[] for _ in range(num_layers)] for kind in ("heads", "neurons")}

    def on_batch(view: BatchView) -> None:
        for kind, gates in (("heads", view.gates.head_gates), ("neurons", view.gates.neuron_gates)):
            for layer, per_batch in enumerate(rows[kind]):
                per_batch.append(_grad_of(gates.get(layer)))

    gated_passes(model, batches, units=("heads", "neurons"), on_batch=on_batch, show_progress=show_progress,
                 desc="mask gradients")
    head_rows = [torch.stack(r) for r in rows["heads"]]
    neuron_rows = [torch.stack(r) for r in rows["neurons"]]
    if distributed and is_distributed():
        head_rows = [gather_rows(r) for r in head_rows]
        neuron_rows = [gather_rows(r) for r in neuron_rows]
    return MaskGradients(head_rows, neuron_rows, int(head_rows[0].shape[0]) if head_rows else 0)


def _grad_of(gate: torch.Tensor | None) -> torch.Tensor:
    if gate is None:
        return torch.zeros(0, dtype=torch.float64)
    grad = gate.grad if gate.grad is not None else torch.zeros_like(gate)
    return grad.detach().to("cpu", torch.float64)
