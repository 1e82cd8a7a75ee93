"""Knowledge-distillation recovery: `DistillationTrainer`, a `transformers.Trainer` whose loss also matches an
unpruned teacher.

Hinton et al. (2015), "Distilling the Knowledge in a Neural Network" (KL between temperature-softened outputs, scaled
by T^2); the hidden-state term follows CoFi (Xia et al., 2022), nn_pruning and Minitron (Muralidharan et al., 2024),
which recover pruned models by distilling from the unpruned one. The loss of a batch is

    alpha * T^2 * KL(softmax(teacher / T) || softmax(student / T)) + (1 - alpha) * label loss
        + hidden_weight * mean over matched layers of MSE(student hidden, teacher hidden)

The KL is averaged over examples (sequence classification) or over the scored tokens (causal LM: the positions
whose next-token label is not -100, or the attention mask when the batch has no labels). Hidden states are matched
layer by layer through the structure record's `source_index`, so a student that lost whole layers compares each
remaining layer with the teacher layer it came from.

Importing this module imports `transformers.Trainer` (which loads `datasets` and `pandas`); `import hfprune` stays
light because the package root loads `hfprune.DistillationTrainer` on first use. The loss terms and the settings
live in `hfprune.recovery.kd`, which does not.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer

from ..passes import is_causal_lm
from .kd import check_distill_options, kd_loss, match_layers, output_size


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
        # A peft-wrapped student (LoRA recovery) is a causal LM when its base model is.
        self.causal_lm = is_causal_lm(model.get_base_model() if hasattr(model, "get_base_model") else model)
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


__all__ = ["DistillationTrainer"]
