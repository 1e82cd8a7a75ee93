"""The `transformers.Trainer` side of a recipe: one Trainer per stage (fine-tune, recover, evaluate).

No training loop of our own: fine-tuning and recovery are `Trainer.train()`, evaluation is `Trainer.evaluate()` with
`hfprune.app.metrics.compute_metrics_fn`, and importance scoring reads the Trainer's own training dataloader.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from ..data.tasks import TaskSpec
from ..metrics import compute_metrics_fn
from .config import TrainConfig


def make_trainer(model: nn.Module, tokenizer, task: TaskSpec, *, train_dataset=None, train: TrainConfig | None = None,
                 eval_batch_size: int = 64, seed: int = 0, quiet: bool = False, callbacks: list | None = None,
                 work_dir: str | Path | None = None, teacher: nn.Module | None = None):
    """A `Trainer` for one stage; `train.steps == 0` gives an evaluation-only Trainer.

    With `train.distill` set and a `teacher`, the stage is an `hfprune.DistillationTrainer` (recovery by
    distillation from the model before pruning).

    Checkpoints are not written (`save_strategy="no"`): the recipe saves the final model itself, atomically.
    """
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    train = train or TrainConfig()
    work_dir = Path(work_dir or tempfile.mkdtemp(prefix="hfprune-trainer-"))
    steps = train.steps
    args = TrainingArguments(
        output_dir=str(work_dir),
        max_steps=steps if steps > 0 else -1,
        per_device_train_batch_size=train.batch_size,
        per_device_eval_batch_size=eval_batch_size,
        learning_rate=train.learning_rate,
        weight_decay=train.weight_decay,
        warmup_steps=math.ceil(train.warmup_ratio * steps),
        lr_scheduler_type="linear",
        logging_strategy="steps" if steps else "no",
        logging_steps=max(1, steps // 5) if steps else 500,
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=quiet,
        log_level="error" if quiet else "warning",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    extra = {}
    if train.distill is not None and teacher is not None:
        from ...recovery.distill import DistillationTrainer as Trainer  # noqa: N814  (same constructor, distillation loss)

        extra = {"teacher_model": teacher, **train.distill}
    trainer = Trainer(
        model=model,
        args=args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer),
        compute_metrics=compute_metrics_fn(task),
        callbacks=callbacks or None,
        **extra,
    )
    if quiet:
        from transformers import PrinterCallback

        trainer.remove_callback(PrinterCallback)  # without progress bars the Trainer prints every log dict
    return trainer


def train_stage(trainer) -> dict:
    """Run `trainer.train()`; returns `{"steps", "loss"}` for the stage summary."""
    output = trainer.train()
    return {"steps": int(output.global_step), "loss": float(output.training_loss)}


def evaluate_splits(trainer, task: TaskSpec, eval_sets: dict) -> dict[str, dict[str, float]]:
    """The task's metrics on each eval split: `{split: {metric: value}}`."""
    out = {}
    for split, dataset in eval_sets.items():
        raw = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
        out[split] = {name: raw[f"eval_{name}"] for name in task.metrics}
        out[split]["loss"] = raw.get("eval_loss")
    return out


def scoring_batches(trainer):
    """The Trainer's training dataloader (shuffled, padded, with labels): what the importance scorers consume."""
    return trainer.get_train_dataloader()
