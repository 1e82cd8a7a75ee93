"""Token reductions shared by the activation-based criteria (Minitron heads / neurons, block influence, angular),
which read their statistics through the hooks of `hfprune.passes.forward_passes`: which tokens count, mean or L2
over them, and the cosine of two hidden states.
"""

from __future__ import annotations

import torch

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


def cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity over the last axis in float64 (the residual stream of late layers is large)."""
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=-1, eps=1e-12)
