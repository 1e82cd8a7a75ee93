"""The recovery stage of a causal-LM run: the teacher (the model before pruning, or `recover.teacher`), the recovery
windows (drawn from the whole text file, apart from the calibration windows) and the training itself
(`hfprune.recovery.causal_lm.recover_causal_lm`: LM loss or distillation, optionally LoRA merged afterwards)."""

from __future__ import annotations

import copy

import torch

from ...calibration import token_stream, window_starts
from ...recovery.kd import output_size
from ..common.options import check
from .options import CausalLMRecipe


def load_teacher(recipe: CausalLMRecipe, model, loader):
    """The teacher of `recover.distill` (None without it), checked against the student before any pruning:
    a copy of `model` before pruning, or `recover.teacher` loaded with `loader(path)`."""
    recover = recipe.recover
    if recover.distill is None or not recover.steps:
        return None
    if recover.teacher is None:
        return copy.deepcopy(model).eval()
    teacher = loader(recover.teacher)
    check(output_size(teacher) == output_size(model),
          f"recover.teacher {recover.teacher}: its vocabulary ({output_size(teacher)} logits) differs from the "
          f"model's ({output_size(model)}); distillation compares their logits token by token")
    if recover.distill["hidden_weight"] > 0:
        check(int(teacher.config.hidden_size) == int(model.config.hidden_size),
              f"recover.teacher {recover.teacher}: hidden size {teacher.config.hidden_size} differs from the "
              f"model's {model.config.hidden_size}; the hidden-state term (distill_hidden) needs them equal")
    return teacher.eval()


def recovery_batches(tokenizer, lines: list[str], recipe: CausalLMRecipe) -> tuple[list[dict], dict]:
    """steps x batch_size windows of seq_len tokens for the recovery, and what the report says about them.

    The text (every line not held out for perplexity) is cut into consecutive windows; those that share a token
    with a calibration window (the same positions `calibration_batches` drew) are left out; the rest are shuffled
    (seed + 1) and taken in turn, again from the start when the budget needs more windows than there are.
    """
    data, steps = recipe.data, recipe.recover.steps
    stream = token_stream(tokenizer, lines)
    used = torch.zeros(stream.numel(), dtype=torch.bool)
    for start in window_starts(stream.numel(), data.seq_len, data.num_samples, recipe.seed).tolist():
        used[start:start + data.seq_len] = True
    count = stream.numel() // data.seq_len
    free = [k for k in range(count) if not used[k * data.seq_len:(k + 1) * data.seq_len].any()]
    check(bool(free), f"text_file {data.text_file}: no window of {data.seq_len} tokens is left for the recovery "
          f"once the {data.num_samples} calibration windows are taken; give more text, fewer num_samples or a "
          "smaller seq_len")
    order = torch.randperm(len(free), generator=torch.Generator().manual_seed(recipe.seed + 1)).tolist()
    need = steps * data.batch_size
    picked = [free[order[i % len(free)]] for i in range(need)]
    windows = torch.stack([stream[k * data.seq_len:(k + 1) * data.seq_len] for k in picked])
    batches = [{"input_ids": w, "attention_mask": torch.ones_like(w), "labels": w.clone()}
               for w in windows.split(data.batch_size)]
    info = {"steps": steps, "batch_size": data.batch_size, "seq_len": data.seq_len, "tokens": need * data.seq_len,
            "windows": need, "distinct_windows": len(set(picked)), "available_windows": len(free),
            "calibration_windows": data.num_samples, "shares_tokens_with_calibration": False}
    return batches, info


def recover(model, batches: list[dict], recipe: CausalLMRecipe, teacher) -> tuple[object, list[float], dict]:
    """Train `model` on `batches` (see `recover_causal_lm`); returns (model, step losses, the method's record)."""
    from ...recovery.causal_lm import recover_causal_lm  # imports transformers.Trainer: only when recovering

    options = recipe.recover
    model, losses = recover_causal_lm(model, batches, options.steps, batch_size=recipe.data.batch_size,
                                      learning_rate=options.learning_rate, teacher=teacher,
                                      distill=options.distill, lora=options.lora, seed=recipe.seed)
    method = {"loss": "distill" if options.distill is not None else "lm", "distill": options.distill,
              "teacher": (options.teacher or "the model before pruning") if options.distill is not None else None,
              "lora": options.lora, "learning_rate": options.learning_rate}
    return model, losses, method
