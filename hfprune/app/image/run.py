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

    config = AutoConfig.from_pretrained(name_or_path)
    if config.num_labels == num_labels:
        return AutoModelForImageClassification.from_pretrained(name_or_path), "kept"
    if not allow_new_head:
        raise ValueError(f"{name_or_path} classifies {config.num_labels} classes but the data has {num_labels}; "
                         "set finetune.steps (--finetune-steps) to train a new classification head")
    model = AutoModelForImageClassification.from_pretrained(name_or_path, num_labels=num_labels,
                                                            ignore_mismatched_sizes=True)
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


def _train(model, data: ImageSet, recipe: ImageRecipe, stage: str, quiet: bool, work: str) -> dict:
    train, seed = getattr(recipe, stage), recipe.seed + (stage == "recover")
    trainer = make_trainer(model, train_dataset=data, train=train, seed=seed, quiet=quiet, work_dir=Path(work) / stage)
    return train_stage(trainer)


def run_image(recipe: ImageRecipe, *, quiet: bool = False) -> dict:
    """Run an image-classification `recipe` end to end and write its outputs to `recipe.output.dir`.

    Example:
        ```python
        >>> results = run_image(recipe_from_dict({"model": {"name_or_path": "out/resnet"},
        ...     "data": {"task": "image-classification", "data_dir": "digits/"}, "prune": {"channels": 0.5},
        ...     "output": {"dir": "out/resnet-pruned"}}))
        ```
    """
    from transformers import AutoConfig, set_seed

    log = StageLog(quiet=quiet)
    out_dir = Path(recipe.output.dir)
    check_output_dir(out_dir)
    cfg = recipe.prune
    with quiet_libraries(quiet), tempfile.TemporaryDirectory(prefix="hfprune-run-") as work:
        set_seed(recipe.seed)
        with log.stage("load") as note:
            config = AutoConfig.from_pretrained(recipe.model.name_or_path)
            size = recipe.data.image_size or getattr(config, "image_size", None)
            train_set, eval_set = load_image_data(recipe.data, int(getattr(config, "num_channels", 3)), size,
                                                  seed=recipe.seed)
            num_labels = int(torch.cat([train_set.labels, eval_set.labels]).max()) + 1
            model, head = load_image_classifier(recipe.model.name_or_path, num_labels, recipe.finetune.steps > 0)
            dense_structure = model_structure(model)
            note["summary"] = (f"{len(train_set)} train / {len(eval_set)} eval images "
                               f"{tuple(train_set.pixels.shape[1:])}, {num_labels} classes; "
                               f"{len(dense_structure['channels'])} channel groups; classification head {head}")
        finetune = recover = before_recovery = None
        if recipe.finetune.steps:
            with log.stage("finetune") as note:
                finetune = _train(model, train_set, recipe, "finetune", quiet, work)
                note["summary"] = f"{finetune['steps']} steps, mean loss {finetune['loss']:.4f}"
        with log.stage("evaluate dense") as note:
            dense_metrics = accuracy(model, eval_set, recipe.eval.batch_size)
            note["summary"] = f"accuracy {dense_metrics['accuracy']:.4f}"
        dense_costs = costs(model, eval_set.pixels)
        dense_copy = copy.deepcopy(model).to("cpu")
        with log.stage("score") as note:
            bs = recipe.finetune.batch_size
            batches = [train_set[i:i + bs] for i in range(0, min(len(train_set), bs * cfg.score_batches), bs)]
            scores = hfprune.channel_importance(model, batches, criterion=cfg.channel_criterion, seed=recipe.seed,
                                                groups=cfg.channel_groups)
            note["summary"] = f"{len(scores)} groups scored ({cfg.channel_criterion}, {len(batches)} batches)"
        with log.stage("select") as note:
            plan = hfprune.select_channels(scores, ratio=cfg.channels, scope=cfg.scope)
            plan.meta.update({"criterion": cfg.channel_criterion, "groups": cfg.channel_groups,
                              "compensated": cfg.channel_compensate,
                              "model_structure": dense_structure})
            note["summary"] = f"remove {plan.num_channels()} channels in {len(plan.channels)} groups"
        with log.stage("prune") as note:
            # Compensation measures on the scoring batches: the removed channels' mean output moves into the biases /
            # BatchNorm means of the layers that read them, so accuracy before recovery is not lost to a mean shift.
            hfprune.prune(model, plan, compensate=batches if cfg.channel_compensate else None)
            pruned_structure = model_structure(model)
            note["summary"] = (f"channels {sum(dense_structure['channels'].values())} -> "
                               f"{sum(pruned_structure['channels'].values())}"
                               + (f", compensated on {len(batches)} batches" if cfg.channel_compensate else ""))
        if recipe.recover.steps:
            with log.stage("evaluate pruned (before recovery)") as note:
                before_recovery = accuracy(model, eval_set, recipe.eval.batch_size)
                note["summary"] = f"accuracy {before_recovery['accuracy']:.4f}"
            with log.stage("recover") as note:
                recover = _train(model, train_set, recipe, "recover", quiet, work)
                note["summary"] = f"{recover['steps']} steps, mean loss {recover['loss']:.4f}"
        with log.stage("evaluate pruned") as note:
            pruned_metrics = accuracy(model, eval_set, recipe.eval.batch_size)
            note["summary"] = f"accuracy {pruned_metrics['accuracy']:.4f}"
        pruned_costs = costs(model, eval_set.pixels)
        with log.stage("latency") as note:
            n = recipe.eval.latency_batch_size
            batch = {"pixel_values": eval_set.pixels[[i % len(eval_set) for i in range(n)]]}
            dense_t, pruned_t = compare_latency(dense_copy, model, batch, recipe.eval.latency_repeats)
            del dense_copy
            note["summary"] = (f"batch {n}: dense {dense_t * 1e3:.1f} ms, pruned {pruned_t * 1e3:.1f} ms "
                               f"({dense_t / pruned_t:.2f}x)")
        run = {"recipe": recipe, "plan": plan, "scores": scores, "head": head, "finetune": finetune,
               "recover": recover, "dense_structure": dense_structure, "pruned_structure": pruned_structure,
               "dense_metrics": dense_metrics, "pruned_metrics": pruned_metrics, "before_recovery": before_recovery,
               "dense_costs": dense_costs, "pruned_costs": pruned_costs, "dense_latency": dense_t,
               "pruned_latency": pruned_t, "latency_batch": batch, "log": log}
        with log.stage("save") as note:
            results = write_image_outputs(model, run, out_dir)
            note["summary"] = f"{out_dir} (reloaded logits max |diff| {results['reload_max_abs_diff']:.2e})"
    if recipe.output.push_to_hub:
        with log.stage("push") as note:
            note["summary"] = push_outputs(out_dir, recipe.output.push_to_hub, private=recipe.output.private)
    return results
