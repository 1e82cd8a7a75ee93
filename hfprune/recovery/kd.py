"""The pieces of knowledge-distillation recovery that need no `Trainer`: the loss terms, the layer matching and the
settings (`DistillationTrainer` in `hfprune.recovery.distill` puts them together; the callback and the recipes
validate their settings here without loading `transformers.Trainer`).

Hinton et al. (2015), "Distilling the Knowledge in a Neural Network" (KL between temperature-softened outputs, scaled
by T^2); the hidden-state term follows CoFi (Xia et al., 2022), nn_pruning and Minitron (Muralidharan et al., 2024).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..arch import get_adapter
from ..structure import get_record


def output_size(model: nn.Module) -> int:
    """Width of the model's logits: the vocabulary for LM heads, `num_labels` for classifiers."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.num_labels)


def source_layers(model: nn.Module) -> list[int]:
    """For each layer of `model`, the index it had in the unpruned model (hfprune's record; identity without one)."""
    record = get_record(model.config)
    if record is not None:
        return [int(spec["source_index"]) for spec in record["layers"]]
    return list(range(len(get_adapter(model).layers(model))))


def match_layers(student: nn.Module, teacher: nn.Module) -> dict[int, int]:
    """student layer -> teacher layer with the same source layer.

    Raises:
        ValueError: a student layer has no counterpart in the teacher.
    """
    teacher_pos = {src: i for i, src in enumerate(source_layers(teacher))}
    out = {}
    for i, src in enumerate(source_layers(student)):
        if src not in teacher_pos:
            raise ValueError(f"DistillationTrainer: student layer {i} comes from layer {src} of the unpruned model, "
                             f"which the teacher does not have (teacher layers: {sorted(teacher_pos)})")
        out[i] = teacher_pos[src]
    return out


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(teacher || student) of temperature-softened distributions, averaged over rows (or masked rows).

    Args:
        student_logits, teacher_logits (`torch.Tensor`): `[..., classes]`.
        mask (`torch.Tensor`, *optional*): bool `[...]`, the rows that count.
    """
    log_s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    per_row = (log_t.exp() * (log_t - log_s)).sum(-1)
    if mask is not None:
        per_row = per_row[mask]
    return per_row.mean() * temperature ** 2


def check_distill_options(alpha, temperature, hidden_weight) -> None:
    """Validate the distillation settings (shared by the trainer, the callback and the recipe config)."""
    for name, value, ok, expected in (("alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                                      ("temperature", temperature, lambda v: v > 0, "> 0"),
                                      ("hidden_weight", hidden_weight, lambda v: v >= 0, ">= 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not ok(value):
            raise ValueError(f"DistillationTrainer: {name} must be a number {expected}, got {value!r}")


DISTILL_DEFAULTS = {"alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0}
# Causal-LM recovery (Minitron, Muralidharan et al. 2024): the logit KL alone (no label term) at temperature 1.
CAUSAL_LM_DISTILL = {"alpha": 1.0, "temperature": 1.0}


def distill_options(value, owner: str = "distill") -> dict:
    """`True` / `{}` / a partial `{alpha, temperature, hidden_weight}` -> the full, validated settings."""
    if value is True:
        value = {}
    if not isinstance(value, dict):
        raise ValueError(f"{owner}: distill must be true or a mapping of alpha / temperature / hidden_weight, "
                         f"got {value!r}")
    unknown = sorted(set(value) - set(DISTILL_DEFAULTS))
    if unknown:
        raise ValueError(f"{owner}: unknown key distill.{unknown[0]} (known: {', '.join(DISTILL_DEFAULTS)})")
    out = {**DISTILL_DEFAULTS, **value}
    check_distill_options(out["alpha"], out["temperature"], out["hidden_weight"])
    return {k: float(v) for k, v in out.items()}
