"""Per-batch gradients of head and FFN-neuron masks: the statistics every step of the budget search reads.

Kwon et al. (2022), "A Fast Post-Training Pruning Framework for Transformers", Section 4.1: with a mask variable
m on every head and neuron (1 = kept), the loss increase of removing a set of units is estimated from the empirical
Fisher of the masks, built from the gradient dL/dm of each calibration batch. The diagonal (the sum of squared
per-batch gradients) ranks units in the mask search; the per-batch vectors themselves give the block-diagonal
Fisher of one layer used by the rearrangement.

The masks are hfprune's own gates (`hfprune.attach_gates(..., requires_grad=True)`): heads at the input of the
attention output projection, neurons at the input of the down projection; no `head_mask` argument is needed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..importance.common import check_model, is_distributed, iter_batches, model_loss, scoring_mode
from ..masking import attach_gates


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


def causal_lm_labels(model: nn.Module, batch: dict) -> dict:
    """Add `labels = input_ids` (padding at -100) to a causal-LM batch that has none: the calibration loss of a
    decoder is its own next-token loss."""
    if "labels" in batch or "label" in batch or "input_ids" not in batch or not is_causal_lm(model):
        return batch
    labels = batch["input_ids"].clone()
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor):
        labels = labels.masked_fill(mask == 0, -100)
    return {**batch, "labels": labels}


def is_causal_lm(model: nn.Module) -> bool:
    """Whether `model` is one of transformers' causal-LM classes (from the public auto mapping)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    names = set()
    for value in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        names.update([value] if isinstance(value, str) else value)
    return type(model).__name__ in names


def calibration_batches(model: nn.Module, dataloader: Iterable, *, num_samples: int | None,
                        show_progress: bool = False, desc: str = "calibration") -> list[dict]:
    """The calibration batches as dicts on the model's device, labels included (causal LMs: `input_ids`)."""
    device = check_model(model)
    raw = (causal_lm_labels(model, dict(b)) if isinstance(b, Mapping) else b for b in dataloader)
    return list(iter_batches(raw, device, num_samples=num_samples, show_progress=show_progress, desc=desc))


def collect_mask_gradients(model: nn.Module, batches: list[dict], *, show_progress: bool = False,
                           distributed: bool = True) -> MaskGradients:
    """One forward + backward of the model's own loss per batch, keeping dL/dm for every head and neuron mask.

    The model runs in eval mode with its weights frozen (gradients reach only the gates); weights, `requires_grad`
    and training flags are as before on return. Under torch.distributed the per-batch rows of every process are
    gathered (in rank order), so each process holds the same matrices as one process that saw all the batches.

    Args:
        model (`PreTrainedModel`): a model of a supported family.
        batches (`list[dict]`): calibration batches with `labels` (see `calibration_batches`).
        distributed (`bool`, defaults to `True`): gather over processes when torch.distributed is initialised.
    """
    check_model(model)
    adapter = get_adapter(model)
    blocks = adapter.layers(model)
    heads: list[list[torch.Tensor]] = [[] for _ in blocks]
    neurons: list[list[torch.Tensor]] = [[] for _ in blocks]
    from tqdm.auto import tqdm

    with torch.inference_mode(False), torch.enable_grad(), scoring_mode(model):
        gates = attach_gates(model, heads=True, neurons=True, requires_grad=True)
        try:
            for index, batch in enumerate(tqdm(batches, desc="mask gradients", disable=not show_progress,
                                               leave=False)):
                gates.zero_grad()
                loss = model_loss(model(**batch), index)
                loss.backward()
                for layer in range(len(blocks)):
                    heads[layer].append(_grad_of(gates.head_gates.get(layer)))
                    neurons[layer].append(_grad_of(gates.neuron_gates.get(layer)))
        finally:
            gates.zero_grad()
            gates.remove()
    head_rows = [torch.stack(rows) for rows in heads]
    neuron_rows = [torch.stack(rows) for rows in neurons]
    if distributed and is_distributed():
        head_rows = [gather_rows(r) for r in head_rows]
        neuron_rows = [gather_rows(r) for r in neuron_rows]
    return MaskGradients(head_rows, neuron_rows, int(head_rows[0].shape[0]) if head_rows else 0)


def _grad_of(gate: torch.Tensor | None) -> torch.Tensor:
    if gate is None:
        return torch.zeros(0, dtype=torch.float64)
    grad = gate.grad if gate.grad is not None else torch.zeros_like(gate)
    return grad.detach().to("cpu", torch.float64)


def gather_rows(rows: torch.Tensor) -> torch.Tensor:
    """Concatenate `[n_i, k]` matrices of every process in rank order (n_i may differ); a no-op without
    torch.distributed."""
    if not is_distributed():
        return rows
    dist = torch.distributed
    device = torch.device("cpu")
    if dist.get_backend() == "nccl":
        device = torch.device("cuda", torch.cuda.current_device())
    count = torch.tensor([rows.shape[0]], device=device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    most = int(max(int(c) for c in counts))
    padded = torch.zeros(most, rows.shape[1], dtype=torch.float64, device=device)
    padded[:rows.shape[0]] = rows.to(device)
    parts = [torch.zeros_like(padded) for _ in counts]
    dist.all_gather(parts, padded)
    return torch.cat([p[:int(c)] for p, c in zip(parts, counts)]).to("cpu")
