"""Recovering a pruned decoder LLM: a few steps of training on token windows, with the plain LM loss or by logit
distillation from the unpruned model (Minitron: Muralidharan et al., 2024), on all weights or through LoRA adapters
that are merged afterwards.

Both losses run through the same `DistillationTrainer` (no teacher: its label loss, the LM loss), the same AdamW at
a constant learning rate and the same batches, so a comparison at one token budget (steps x batch size x sequence
length) differs only in the loss. Importing this module imports `transformers.Trainer`.
"""

from __future__ import annotations

import tempfile

import torch
from torch import nn
from transformers import PrinterCallback, TrainerCallback, TrainingArguments, default_data_collator

from .distill import DistillationTrainer
from .kd import CAUSAL_LM_DISTILL, distill_options
from .lora import attach_lora, check_rank, merge_lora, require_peft


class _StepLosses(TrainerCallback):
    """The training loss of every step (the Trainer logs every step)."""

    def __init__(self):
        self.losses: list[float] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses.append(float(logs["loss"]))


def _examples(batches: list[dict]) -> list[dict]:
    """One `{input_ids, attention_mask, labels}` per window of `batches`."""
    out = []
    for batch in batches:
        ids = batch["input_ids"]
        mask = batch.get("attention_mask", torch.ones_like(ids))
        labels = batch.get("labels", ids)
        out += [{"input_ids": ids[i], "attention_mask": mask[i], "labels": labels[i]} for i in range(ids.shape[0])]
    return out


def recover_causal_lm(model: nn.Module, batches: list[dict], steps: int, *, batch_size: int | None = None,
                      learning_rate: float = 5e-5, teacher: nn.Module | None = None, distill: dict | bool | None = None,
                      lora: int | None = None, seed: int = 0, work_dir: str | None = None) -> tuple[nn.Module, list]:
    """Train a pruned causal LM for `steps` steps on the windows of `batches`; returns (model, loss of each step).

    Args:
        model: the pruned decoder (trained in place; with `lora` the returned model is the same object with the
            adapters merged into its weights).
        batches: token windows (`input_ids`, optional `attention_mask` / `labels`), e.g. from
            `hfprune.calibration_batches`; their windows are re-batched by `batch_size` and shuffled by `seed`.
        steps: optimizer steps (the token budget is steps x batch_size x window length).
        batch_size: windows per step (default: the size of the first batch).
        learning_rate: AdamW, constant, no weight decay.
        teacher: the unpruned model; with `distill`, the loss is `DistillationTrainer`'s (default for causal LMs:
            `CAUSAL_LM_DISTILL`, the logit KL at T=1; `hidden_weight` adds the hidden-state term).
        distill: `True` or `{alpha, temperature, hidden_weight}`; None: the plain LM loss.
        lora: a LoRA rank: train rank-`lora` adapters on every projection instead of all weights, then merge them.

    Raises:
        ValueError: distill without a teacher, a teacher whose vocabulary differs, a bad rank, peft missing.
    """
    if distill is not None and distill is not False:
        if teacher is None:
            raise ValueError("recover_causal_lm: distill needs a teacher (the model before pruning)")
        distill = distill_options({**CAUSAL_LM_DISTILL, **({} if distill is True else distill)}, "recover_causal_lm")
    else:
        distill, teacher = None, None
    if lora is not None:
        check_rank(lora, "recover_causal_lm")
        require_peft("recover_causal_lm")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"recover_causal_lm: steps must be a positive integer, got {steps!r}")
    examples = _examples(batches)
    batch_size = batch_size or int(batches[0]["input_ids"].shape[0])
    student = attach_lora(model, lora) if lora is not None else model
    args = TrainingArguments(output_dir=work_dir or tempfile.mkdtemp(prefix="hfprune-recover-"), max_steps=steps,
                             per_device_train_batch_size=batch_size, learning_rate=learning_rate, weight_decay=0.0,
                             lr_scheduler_type="constant", logging_strategy="steps", logging_steps=1,
                             save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
                             log_level="error", seed=seed, data_seed=seed, dataloader_num_workers=0,
                             use_cpu=not torch.cuda.is_available(), remove_unused_columns=False)
    log = _StepLosses()
    trainer = DistillationTrainer(student, args=args, train_dataset=examples, data_collator=default_data_collator,
                                  callbacks=[log], teacher_model=teacher, **(distill or {}))
    trainer.remove_callback(PrinterCallback)
    try:
        trainer.train()
    finally:
        model = merge_lora(student) if lora is not None else model
        model.eval()
    return model, log.losses


__all__ = ["CAUSAL_LM_DISTILL", "recover_causal_lm"]
