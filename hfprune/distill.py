"""Knowledge-distillation recovery: a `transformers.Trainer` whose loss also matches an unpruned teacher.

Hinton et al. (2015), "Distilling the Knowledge in a Neural Network" (KL between temperature-softened outputs, scaled
by T^2); the hidden-state term follows CoFi (Xia et al., 2022), nn_pruning and Minitron (Muralidharan et al., 2024),
which recover pruned models by distilling from the unpruned one. The loss of a batch is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * label loss
        + hidden_weight * mean over matched layers of MSE(student hidden, teacher hidden)

The KL is averaged over examples (sequence classification) or over the scored tokens (causal LM: the positions
whose next-token label is not -100, or the attention mask when the batch has no labels). Hidden states are matched
layer by layer through the structure record's `source_index`, so a student that lost whole layers compares each
remaining layer with the teacher layer it came from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def output_size(model: nn.Module) -> int:
    """Width of the model's logits: the vocabulary for LM heads, `num_labels` for classifiers."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if head is not None and getattr(head, "weight", None) is not None:
        return int(head.weight.shape[0])
    return int(model.config.num_labels)


def source_layers(model: nn.Module) -> list[int]:
    """For each layer of `model`, the index it had in the unpruned model (hfprune's record; identity without one)."""
    from .arch import get_adapter
    from .structure import get_record

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


def _is_causal_lm(model: nn.Module) -> bool:
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    return type(model).__name__ in set(MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values())


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


_CLASS = None


def _trainer_class():
    """Build `DistillationTrainer` on first use: `transformers.Trainer` imports `datasets` and `pandas`, which the
    library core must not load on import (`import hfprune.distill` stays light)."""
    global _CLASS
    if _CLASS is not None:
        return _CLASS
    from transformers import Trainer

    class DistillationTrainer(Trainer):
        """A `Trainer` that recovers a pruned model by distillation from a teacher (usually the model before pruning).

        The teacher runs in eval mode, without gradients, on the student's device (optionally in another dtype, e.g.
        `teacher_dtype=torch.bfloat16` to halve its memory and time); its parameters are frozen.

        Args:
            model (`PreTrainedModel`): the student.
            teacher_model (`PreTrainedModel`, *optional*): the teacher; same output size as the student. Without one
                the loss is the plain label loss until `set_teacher` is called (what `PruningCallback(distill=...)` does
                at its pruning step, with a frozen copy of the model before pruning).
            alpha (`float`, defaults to 0.5): weight of the KL term; `1 - alpha` weighs the label loss.
            temperature (`float`, defaults to 2.0): softmax temperature of the KL term.
            hidden_weight (`float`, defaults to 0.0): weight of the hidden-state MSE (0: off).
            teacher_dtype (`torch.dtype` or `str`, *optional*): cast the teacher, e.g. `torch.bfloat16`.
            layer_map (`dict[int, int]`, *optional*): student layer -> teacher layer for the hidden term (default: by
                the structure record's `source_index`).
            *args, **kwargs: passed to `transformers.Trainer` (`args`, `train_dataset`, `data_collator`, ...).

        Example:
            ```py
            teacher = copy.deepcopy(model)            # before pruning
            hfprune.prune(model, plan)
            trainer = hfprune.DistillationTrainer(model, teacher_model=teacher, alpha=0.5, temperature=2.0,
                                                  args=TrainingArguments("out", max_steps=300), train_dataset=train)
            trainer.train()
            ```
        """

        # compute_loss returns a per-batch mean: the Trainer divides it by the gradient-accumulation steps.
        loss_is_scaled_for_ga = False

        def __init__(self, model: nn.Module | None = None, *args, teacher_model: nn.Module | None = None,
                     alpha: float = 0.5, temperature: float = 2.0, hidden_weight: float = 0.0,
                     teacher_dtype: torch.dtype | str | None = None, layer_map: dict[int, int] | None = None,
                     **kwargs):
            check_distill_options(alpha, temperature, hidden_weight)
            if model is None:
                raise ValueError("DistillationTrainer: model (the student) is required")
            if teacher_model is not None:
                layer_map = self._check_teacher(model, teacher_model, hidden_weight, layer_map)
            super().__init__(model, *args, **kwargs)
            self.model_accepts_loss_kwargs = False  # the label loss is the model's per-batch mean
            self.alpha, self.temperature, self.hidden_weight = float(alpha), float(temperature), float(hidden_weight)
            self.causal_lm = _is_causal_lm(model)
            self.teacher_model, self.layer_map = None, {}
            self.teacher_dtype = getattr(torch, teacher_dtype) if isinstance(teacher_dtype, str) else teacher_dtype
            if teacher_model is not None:
                self._install(teacher_model, layer_map)

        @staticmethod
        def _check_teacher(student: nn.Module, teacher: nn.Module, hidden_weight: float, layer_map) -> dict[int, int]:
            if not isinstance(teacher, nn.Module):
                raise ValueError(f"DistillationTrainer: teacher_model must be a model, got {type(teacher).__name__}")
            if output_size(teacher) != output_size(student):
                raise ValueError(f"DistillationTrainer: the teacher's output size ({output_size(teacher)}) differs "
                                 f"from the student's ({output_size(student)}); distillation compares their logits")
            if hidden_weight <= 0:
                return {}
            if int(teacher.config.hidden_size) != int(student.config.hidden_size):
                raise ValueError("DistillationTrainer: hidden_weight > 0 needs equal hidden sizes, got teacher "
                                 f"{teacher.config.hidden_size} and student {student.config.hidden_size}")
            return dict(layer_map) if layer_map is not None else match_layers(student, teacher)

        def _install(self, teacher: nn.Module, layer_map: dict[int, int]) -> None:
            teacher.eval()
            teacher.requires_grad_(False)
            self.teacher_model = teacher.to(device=self.args.device, dtype=self.teacher_dtype)
            self.layer_map = layer_map

        def set_teacher(self, teacher_model: nn.Module, layer_map: dict[int, int] | None = None) -> None:
            """Start distilling from `teacher_model` (checked as in `__init__`); `PruningCallback(distill=...)` calls
            this with a frozen copy of the model taken just before it masks or prunes."""
            unwrapped = self.accelerator.unwrap_model(self.model) if hasattr(self, "accelerator") else self.model
            self._install(teacher_model, self._check_teacher(unwrapped, teacher_model, self.hidden_weight, layer_map))

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            """The distillation loss of one batch (see the class docstring); the label loss from `Trainer`'s."""
            if self.teacher_model is None:  # no teacher yet (set by PruningCallback at its pruning step)
                return super().compute_loss(model, inputs, return_outputs=return_outputs)
            hidden = self.hidden_weight > 0
            student_inputs = {**inputs, "output_hidden_states": True} if hidden else dict(inputs)
            labels = inputs.get("labels")
            if labels is not None:
                label_loss, outputs = super().compute_loss(model, student_inputs, return_outputs=True)
            else:
                if self.alpha < 1:
                    raise ValueError(f"DistillationTrainer: alpha={self.alpha} mixes in the label loss, but the "
                                     "batch has no 'labels' (use alpha=1.0 for pure distillation)")
                outputs, label_loss = model(**student_inputs), None
            teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
            with torch.no_grad():
                teacher_out = self.teacher_model(**teacher_inputs, **({"output_hidden_states": True} if hidden else {}))
            loss = self.alpha * kd_loss(outputs.logits, teacher_out.logits, self.temperature,
                                        self._kd_mask(outputs.logits, inputs))
            if label_loss is not None and self.alpha < 1:
                loss = loss + (1 - self.alpha) * label_loss
            if hidden:
                loss = loss + self.hidden_weight * self._hidden_loss(outputs.hidden_states, teacher_out.hidden_states,
                                                                     inputs.get("attention_mask"))
            return (loss, outputs) if return_outputs else loss

        def _kd_mask(self, logits: torch.Tensor, inputs: dict) -> torch.Tensor | None:
            if logits.dim() < 3:
                return None
            labels, attention = inputs.get("labels"), inputs.get("attention_mask")
            if labels is not None and labels.shape == logits.shape[:-1]:
                if self.causal_lm:  # logits at t predict token t+1: score t where label t+1 counts
                    mask = torch.zeros_like(labels, dtype=torch.bool)
                    mask[:, :-1] = labels[:, 1:] != -100
                    return mask
                return labels != -100
            if attention is not None and attention.shape == logits.shape[:-1]:
                return attention.bool()
            return None

        def _hidden_loss(self, student: tuple, teacher: tuple, attention: torch.Tensor | None) -> torch.Tensor:
            terms = []
            for s_layer, t_layer in self.layer_map.items():
                # hidden_states[0] is the embedding output; layer i's output is hidden_states[i + 1].
                diff = (student[s_layer + 1].float() - teacher[t_layer + 1].float()).pow(2)
                if attention is not None and attention.shape == diff.shape[:2]:
                    terms.append(diff[attention.bool()].mean())
                else:
                    terms.append(diff.mean())
            return torch.stack(terms).mean()

    _CLASS = DistillationTrainer
    return _CLASS


def __getattr__(name: str):
    if name == "DistillationTrainer":
        return _trainer_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_distill_options(alpha, temperature, hidden_weight) -> None:
    """Validate the distillation settings (shared by the trainer, the callback and the recipe config)."""
    for name, value, ok, expected in (("alpha", alpha, lambda v: 0.0 <= v <= 1.0, "in [0, 1]"),
                                      ("temperature", temperature, lambda v: v > 0, "> 0"),
                                      ("hidden_weight", hidden_weight, lambda v: v >= 0, ">= 0")):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not ok(value):
            raise ValueError(f"DistillationTrainer: {name} must be a number {expected}, got {value!r}")


DISTILL_DEFAULTS = {"alpha": 0.5, "temperature": 2.0, "hidden_weight": 0.0}


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
