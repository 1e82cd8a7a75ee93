"""Forward-only passes shared by the activation-based criteria (Minitron heads / neurons, block influence, angular).

No gradient, no labels: the model runs in eval mode under `torch.no_grad()` (parameters frozen and restored by
`scoring_mode`), optionally under the mask of a plan, and each batch is yielded after its forward so the criterion's
hooks have filled their statistics. Labels are dropped before the forward (the loss is not needed).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import nn

from ..importance.common import check_model, iter_batches, scoring_mode
from ..masking import mask
from ..plan import PruningPlan

REDUCTIONS = ("mean", "l2")


def check_reduction(name: str, value: str) -> None:
    if value not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {REDUCTIONS}, got {value!r}")


def token_mask(batch: dict, shape: torch.Size) -> torch.Tensor:
    """`[batch, seq]` bool: the non-padding tokens (all tokens when the batch has no matching attention mask)."""
    attn = batch.get("attention_mask")
    if isinstance(attn, torch.Tensor) and attn.dim() == 2 and tuple(attn.shape) == tuple(shape):
        return attn.bool()
    return torch.ones(shape, dtype=torch.bool, device=batch_device(batch))


def batch_device(batch: dict) -> torch.device:
    for value in batch.values():
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")


def forward_passes(model: nn.Module, dataloader: Iterable, *, attach: Callable[[], list], on_batch: Callable,
                   plan: PruningPlan | None = None, max_batches: int | None = None, num_samples: int | None = None,
                   show_progress: bool = True, desc: str = "scoring") -> None:
    """Run the model's forward on each batch (no grad, eval mode, `plan` masked), calling `on_batch(batch)` first.

    Args:
        attach (`Callable[[], list]`): registers the criterion's hooks and returns their handles; called after the
            plan's mask is attached, so a pre-hook on a gated projection sees the gated input. Removed on exit.
        on_batch (`Callable[[dict], None]`): called with each batch (on the model's device) before its forward, so
            the hooks can read its attention mask.
    """
    device = check_model(model, needs_grad=False)
    with scoring_mode(model), torch.no_grad():
        gates = mask(model, plan) if plan is not None and not plan.is_empty() else None
        handles = []
        try:
            handles = attach()
            for batch in iter_batches(dataloader, device, max_batches=max_batches, num_samples=num_samples,
                                      show_progress=show_progress, desc=desc, need_labels=False):
                on_batch(batch)
                model(**{k: v for k, v in batch.items() if k != "labels"})
        finally:
            for handle in handles:
                handle.remove()
            if gates is not None:
                gates.remove()


def reduce_tokens(values: torch.Tensor, keep: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Reduce `[batch, seq, units]` over the kept tokens of each sequence: mean or L2.

    Returns:
        (`[batch, units]` float64 per-sequence values, `[batch]` bool: sequences with at least one kept token).
    """
    values = values.double() * keep.unsqueeze(-1)
    counts = keep.sum(1)
    if how == "mean":
        out = values.sum(1) / counts.clamp_min(1).unsqueeze(-1)
    else:
        out = values.pow(2).sum(1).sqrt()
    return out, counts > 0


def block_input(args: tuple, kwargs: dict) -> torch.Tensor:
    """The hidden states a block received (first positional argument or `hidden_states=`)."""
    return args[0] if args else kwargs["hidden_states"]


def block_output(output) -> torch.Tensor:
    """The hidden states a block returned (v5 decoder layers return a tensor, older ones a tuple)."""
    return output[0] if isinstance(output, tuple) else output


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis in float64 (the residual stream of late layers is large)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)
