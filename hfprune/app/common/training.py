"""The `transformers.Trainer` side of a run: one Trainer per stage (fine-tune, recover, evaluate), for every
application that trains (GLUE, image classification).

No training loop of our own: fine-tuning and recovery are `Trainer.train()`, evaluation is `Trainer.evaluate()`.
Progress bars only on a terminal (`progress.show_bars`); elsewhere the Trainer prints its log lines instead, and with
`quiet` nothing.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import torch
from torch import nn

from ...flops import measure_latency
from .options import TrainConfig
from .progress import show_bars


def make_trainer(model: nn.Module, *, train_dataset=None, train: TrainConfig | None = None, eval_batch_size: int = 64,
                 seed: int = 0, quiet: bool = False, callbacks: list | None = None,
                 work_dir: str | Path | None = None, teacher: nn.Module | None = None, **trainer_kwargs):
    """A `Trainer` for one stage; `train.steps == 0` gives an evaluation-only Trainer.

    With `train.distill` set (recovery options that have it) and a `teacher`, the stage is an
    `hfprune.DistillationTrainer` (recovery by distillation from the model before pruning). `trainer_kwargs` go to
    the Trainer (`processing_class`, `data_collator`, `compute_metrics`).

    Checkpoints are not written (`save_strategy="no"`): the run saves the final model itself, atomically.
    """
    from transformers import PrinterCallback, Trainer, TrainingArguments

    # Here, not at the top: `recovery.distill` subclasses `transformers.Trainer` at import, which loads `datasets`,
    # and `hfprune --help` should not wait for that.
    from ...recovery.distill import DistillationTrainer

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
        disable_tqdm=not show_bars(quiet),  # a bar only on a terminal; the Trainer prints log lines otherwise
        log_level="error" if quiet else "warning",
        seed=seed,
        data_seed=seed,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    distill = getattr(train, "distill", None)
    trainer_class, extra = Trainer, {}
    if distill is not None and teacher is not None:
        trainer_class, extra = DistillationTrainer, {"teacher_model": teacher, **distill}
    trainer = trainer_class(model=model, args=args, train_dataset=train_dataset, callbacks=callbacks or None,
                            **trainer_kwargs, **extra)
    if quiet or not steps:
        # Without a bar the Trainer prints every log dict: the training losses stand in for the bar, but an
        # evaluation's metrics are the stage line's already.
        trainer.remove_callback(PrinterCallback)
    return trainer


def train_stage(trainer) -> dict:
    """Run `trainer.train()`; returns `{"steps", "loss"}` for the stage summary."""
    output = trainer.train()
    return {"steps": int(output.global_step), "loss": float(output.training_loss)}


def compare_latency(dense: nn.Module, pruned: nn.Module, batch: dict, repeats: int) -> tuple[float, float]:
    """(dense, pruned) seconds per forward pass of `batch`: two alternating rounds, so that a load spike on a shared
    machine hits both alike; the faster round of each."""
    rounds = [(measure_latency(dense, batch, repeats), measure_latency(pruned, batch, repeats)) for _ in range(2)]
    return min(r[0] for r in rounds), min(r[1] for r in rounds)
