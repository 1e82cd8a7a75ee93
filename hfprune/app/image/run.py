"""Running an image-classification recipe on a CNN: optional fine-tune -> score channels -> select -> prune ->
optional recovery -> evaluate -> latency -> save, with the same outputs as the GLUE path (model, results.json,
report.md, plots, model card).

A thin shell over the library: `hfprune.channel_importance` (criterion `prune.channel_criterion`) on training
batches, `select_channels`, `hfprune.prune`; training is `transformers.Trainer`.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

import hfprune

from ...io import require_safetensors
from ...structure import model_structure
from ..common.outputs import check_output_dir, push_outputs
from ..common.progress import StageLog, quiet_libraries
from ..common.training import compare_latency, make_trainer, train_stage
from .data import ImageSet, load_image_data
from .options import ImageRecipe
from .writer import write_image_outputs


def load_image_classifier(name_or_path: str, num_labels: int, allow_new_head: bool):
    """`AutoModelForImageClassification` with `num_labels` outputs (a new head only when fine-tuning follows).

    Raises:
        ValueError: the checkpoint's head has another number of classes and there is no fine-tune to train a new one.
    """
    from transformers import AutoConfig, AutoModelForImageClassification

    require_safetensors(name_or_path)  # a pickle-only folder: refused, naming the file
    config = AutoConfig.from_pretrained(name_or_path)
    if config.num_labels == num_labels:
        return AutoModelForImageClassification.from_pretrained(name_or_path, use_safetensors=True), "kept"
    if not allow_new_head:
        raise ValueError(f"{name_or_path} classifies {config.num_labels} classes but the data has {num_labels}; "
                         "set finetune.steps (--finetune-steps) to train a new classification head")
    model = AutoModelForImageClassification.from_pretrained(name_or_path, num_labels=num_labels,
                                                            ignore_mismatched_sizes=True, use_safetensors=True)
    return model, "new"


def accuracy(model, data: ImageSet, batch_size: int) -> dict:
    device = next(model.parameters()).device
    model.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            logits = model(pixel_values=data.pixels[i:i + batch_size].to(device)).logits
            correct += int((logits.argmax(-1).cpu() == data.labels[i:i + batch_size]).sum())
    return {"accuracy": correct / max(1, len(data)), "num_examples": len(data)}


def costs(model, example: torch.Tensor) -> dict:
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(pixel_values=example[:1].to(next(model.parameters()).device))
    return {"params": sum(p.numel() for p in model.parameters()), "flops": counter.get_total_flops()}


def _load(run: dict) -> None:
    """Images, the CNN (with a head of the data's class count) and its channel groups into `run`."""
    from transformers import AutoConfig

    recipe = run["recipe"]
    with run["log"].stage("load") as note:
        config = AutoConfig.from_pretrained(recipe.model.name_or_path)
        size = recipe.data.image_size or getattr(config, "image_size", None)
        train_set, eval_set = load_image_data(recipe.data, int(getattr(config, "num_channels", 3)), size,
                                              seed=recipe.seed)
        num_labels = int(torch.cat([train_set.labels, eval_set.labels]).max()) + 1
        model, head = load_image_classifier(recipe.model.name_or_path, num_labels, recipe.finetune.steps > 0)
        structure = model_structure(model)
        run.update(model=model, head=head, train_set=train_set, eval_set=eval_set, dense_structure=structure)
        note["summary"] = (f"{len(train_set)} train / {len(eval_set)} eval images "
                           f"{tuple(train_set.pixels.shape[1:])}, {num_labels} classes; "
                           f"{len(structure['channels'])} channel groups; classification head {head}")


def _train(run: dict, stage: str) -> dict:
    """The fine-tune or recovery stage (`Trainer.train()`); returns its `{"steps", "loss"}`."""
    recipe = run["recipe"]
    with run["log"].stage(stage) as note:
        trainer = make_trainer(run["model"], train_dataset=run["train_set"], train=getattr(recipe, stage),
                               seed=recipe.seed + (stage == "recover"), quiet=run["quiet"],
                               work_dir=run["work"] / stage)
        out = train_stage(trainer)
        note["summary"] = f"{out['steps']} steps, mean loss {out['loss']:.4f}"
    return out


def _evaluate(run: dict, stage: str) -> dict:
    with run["log"].stage(stage) as note:
        metrics = accuracy(run["model"], run["eval_set"], run["recipe"].eval.batch_size)
        note["summary"] = f"accuracy {metrics['accuracy']:.4f}"
    return metrics


def _prune(run: dict) -> None:
    """Score channels on training batches, select, prune (compensated when asked) into `run`."""
    recipe, model, log, dense = run["recipe"], run["model"], run["log"], run["dense_structure"]
    cfg, train_set = recipe.prune, run["train_set"]
    with log.stage("score") as note:
        bs = recipe.finetune.batch_size
        batches = [train_set[i:i + bs] for i in range(0, min(len(train_set), bs * cfg.score_batches), bs)]
        scores = hfprune.channel_importance(model, batches, criterion=cfg.channel_criterion, seed=recipe.seed,
                                            groups=cfg.channel_groups)
        note["summary"] = f"{len(scores)} groups scored ({cfg.channel_criterion}, {len(batches)} batches)"
    with log.stage("select") as note:
        plan = hfprune.select_channels(scores, ratio=cfg.channels, scope=cfg.scope)
        plan.meta.update({"criterion": cfg.channel_criterion, "groups": cfg.channel_groups,
                          "compensated": cfg.channel_compensate, "model_structure": dense})
        note["summary"] = f"remove {plan.num_channels()} channels in {len(plan.channels)} groups"
    with log.stage("prune") as note:
        # Compensation measures on the scoring batches: the removed channels' mean output moves into the biases /
        # BatchNorm means of the layers that read them, so accuracy before recovery is not lost to a mean shift.
        hfprune.prune(model, plan, compensate=batches if cfg.channel_compensate else None)
        pruned = model_structure(model)
        note["summary"] = (f"channels {sum(dense['channels'].values())} -> {sum(pruned['channels'].values())}"
                           + (f", compensated on {len(batches)} batches" if cfg.channel_compensate else ""))
    run.update(scores=scores, plan=plan, pruned_structure=pruned)


def _latency(run: dict, dense_copy) -> None:
    recipe, eval_set = run["recipe"], run["eval_set"]
    with run["log"].stage("latency") as note:
        n = recipe.eval.latency_batch_size
        batch = {"pixel_values": eval_set.pixels[[i % len(eval_set) for i in range(n)]]}
        dense_t, pruned_t = compare_latency(dense_copy, run["model"], batch, recipe.eval.latency_repeats)
        note["summary"] = (f"batch {n}: dense {dense_t * 1e3:.1f} ms, pruned {pruned_t * 1e3:.1f} ms "
                           f"({dense_t / pruned_t:.2f}x)")
    run.update(dense_latency=dense_t, pruned_latency=pruned_t, latency_batch=batch)


def _stages(run: dict) -> None:
    """Every stage between loading and saving, in order; each adds its results to `run`."""
    recipe, model, pixels = run["recipe"], run["model"], run["eval_set"].pixels
    run["finetune"] = _train(run, "finetune") if recipe.finetune.steps else None
    run["dense_metrics"] = _evaluate(run, "evaluate dense")
    run["dense_costs"] = costs(model, pixels)
    dense_copy = copy.deepcopy(model).to("cpu")  # for a back-to-back latency comparison at the end
    _prune(run)
    run["before_recovery"] = run["recover"] = None
    if recipe.recover.steps:
        run["before_recovery"] = _evaluate(run, "evaluate pruned (before recovery)")
        run["recover"] = _train(run, "recover")
    run["pruned_metrics"] = _evaluate(run, "evaluate pruned")
    run["pruned_costs"] = costs(model, pixels)
    _latency(run, dense_copy)


def run_image(recipe: ImageRecipe, *, quiet: bool = False) -> dict:
    """Run an image-classification `recipe` end to end and write its outputs to `recipe.output.dir`.

    Example:
        ```python
        >>> results = run_image(recipe_from_dict({"model": {"name_or_path": "out/resnet"},
        ...     "data": {"task": "image-classification", "data_dir": "digits/"}, "prune": {"channels": 0.5},
        ...     "output": {"dir": "out/resnet-pruned"}}))
        ```
    """
    from transformers import set_seed

    out_dir = Path(recipe.output.dir)
    check_output_dir(out_dir)
    log = StageLog(quiet=quiet)
    with quiet_libraries(quiet), tempfile.TemporaryDirectory(prefix="hfprune-run-") as work:
        set_seed(recipe.seed)
        run = {"recipe": recipe, "log": log, "quiet": quiet, "work": Path(work)}
        _load(run)
        _stages(run)
        with log.stage("save") as note:
            results = write_image_outputs(run["model"], run, out_dir)
            note["summary"] = f"{out_dir} (reloaded logits max |diff| {results['reload_max_abs_diff']:.2e})"
    if recipe.output.push_to_hub:
        with log.stage("push") as note:
            note["summary"] = push_outputs(out_dir, recipe.output.push_to_hub, private=recipe.output.private)
    return results
