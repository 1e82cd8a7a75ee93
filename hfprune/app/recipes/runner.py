"""Running a recipe: optional fine-tune -> score -> select -> prune -> optional recovery -> evaluate -> save.

A thin shell over the library stages: `transformers.Trainer` trains and evaluates, `hfprune.head_importance` /
`neuron_importance` / `layer_importance` score (on the Trainer's own training dataloader), `select_*` turn scores into
a `PruningPlan`, `hfprune.prune` removes the units, and `hfprune.app.report` writes the outputs atomically.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

from ...criteria import closest_criterion
from ...flops import measure_latency, model_costs
from ...plan import PruningPlan
from ...structure import get_record, model_structure
from ..data import get_task, load_task_data, tokenize
from ..report.outputs import check_output_dir, push_outputs, write_outputs
from ..report.progress import StageLog, quiet_libraries
from .config import IMAGE_TASK, Recipe, TrainConfig
from .modeling import load_classifier
from .training import evaluate_splits, make_trainer, scoring_batches, train_stage


def _fmt(metrics: dict, task) -> str:
    split = metrics[task.eval_splits[0]]
    return ", ".join(f"{m} {split[m]:.4f}" for m in task.metrics)


def _latency_batch(data, tokenizer, task, recipe: Recipe) -> dict:
    rows = data[task.eval_splits[0]]
    n = recipe.eval.latency_batch_size
    idx = [i % rows.num_rows for i in range(n)]
    texts = [[rows[c][i] for i in idx] for c in task.text_columns]
    return dict(tokenizer(*texts, padding="max_length", truncation=True, max_length=recipe.eval.latency_seq_len,
                          return_tensors="pt"))


def _callbacks(train: TrainConfig) -> list:
    if not train.layerdrop:
        return []
    import hfprune

    return [hfprune.LayerDropCallback(p=train.layerdrop, mode=train.layerdrop_mode)]


def _score_and_select(model, loader, recipe: Recipe, structure: dict, log: StageLog, quiet: bool):
    import hfprune

    cfg = recipe.prune
    scores: dict = {}
    with log.stage("score") as note:
        # One name for both unit kinds; a head-only criterion scores neurons with the registry's first neuron
        # criterion of the same pass (Michel et al.'s gate gradients -> Taylor).
        neuron_criterion = closest_criterion(cfg.criterion, "neurons")
        common = {"max_batches": cfg.score_batches, "show_progress": not quiet}
        seed = {"seed": recipe.seed}  # read only by criteria that need one (random); the others ignore it
        if cfg.heads or cfg.sweep:
            scores["heads"] = hfprune.head_importance(model, loader, criterion=cfg.criterion, **common, **seed)
        if cfg.ffn:
            scores["neurons"] = hfprune.neuron_importance(model, loader, criterion=neuron_criterion, **common, **seed)
        if cfg.layers:
            scores["layers"] = hfprune.layer_importance(model, loader, method=cfg.layer_method, **common)
        note["summary"] = f"{', '.join(scores) or 'nothing'} scored ({cfg.criterion}, {cfg.score_batches} batches)"
    with log.stage("select") as note:
        heads = neurons = {}
        layers: list[int] = []
        if cfg.heads:
            heads = hfprune.select_heads(scores["heads"], ratio=cfg.heads, scope=cfg.scope,
                                         min_per_layer=cfg.min_heads_per_layer).heads
        if cfg.ffn:
            neurons = hfprune.select_neurons(scores["neurons"], ratio=cfg.ffn, scope=cfg.scope,
                                             round_to=cfg.round_ffn_to).neurons
        if cfg.layers:
            layers = hfprune.select_layers(scores["layers"], count=cfg.layers).layers
        meta = {"criterion": cfg.criterion, "neuron_criterion": neuron_criterion if cfg.ffn else None,
                "layer_method": cfg.layer_method if cfg.layers else None, "heads_ratio": cfg.heads,
                "ffn_ratio": cfg.ffn, "scope": cfg.scope, "model_structure": structure}
        plan = PruningPlan(heads=heads, neurons=neurons, layers=layers, meta=meta)
        note["summary"] = (f"remove {plan.num_heads()} heads, {plan.num_neurons()} FFN neurons, "
                           f"layers {plan.layers}")
    return scores, plan


def _prune_to_budget(model, loader, recipe: Recipe, structure: dict, quiet: bool) -> PruningPlan:
    """`hfprune.prune_to_budget` on the training batches; FLOPs and latency at the report's sequence length."""
    import hfprune

    cfg = recipe.prune
    plan = hfprune.prune_to_budget(model, loader, **cfg.budget, seq_len=recipe.eval.latency_seq_len,
                                   num_samples=cfg.budget_samples, tune=cfg.budget_tune, show_progress=not quiet)
    plan.meta.update({"criterion": "kwon2022", "model_structure": structure})
    return plan


def _sweep(model, trainer, task, eval_set, head_scores, recipe: Recipe, log: StageLog) -> list[dict]:
    import hfprune

    points = []
    with log.stage("sweep") as note:
        for fraction in recipe.prune.sweep:
            plan = hfprune.select_heads(head_scores, ratio=fraction, scope=recipe.prune.scope,
                                        min_per_layer=recipe.prune.min_heads_per_layer) if fraction else PruningPlan()
            with hfprune.masked(model, plan):
                metrics = evaluate_splits(trainer, task, {"sweep": eval_set})["sweep"]
            points.append({"fraction": fraction, "heads_removed": plan.num_heads(), **metrics})
        note["summary"] = ", ".join(f"{p['fraction']:.2f}: {p[task.main_metric]:.4f}" for p in points)
    return points


def run_recipe(recipe: Recipe, *, quiet: bool = False) -> dict:
    """Run `recipe` end to end and write its outputs to `recipe.output.dir`.

    Args:
        recipe (`Recipe`): a validated recipe (`load_recipe`, or built from `hfprune prune` flags).
        quiet (`bool`, defaults to `False`): no progress bars, no stage lines.

    Returns:
        `dict`: the content of results.json.

    Example:
        ```python
        >>> from hfprune.app.recipes import load_recipe, run_recipe
        >>> results = run_recipe(load_recipe("recipes/sst2.yaml", ["data.data_dir=../shared/data/glue"]))
        >>> results["pruned"]["metrics"]["validation"]["accuracy"]
        ```
    """
    from transformers import set_seed

    if recipe.data.task == IMAGE_TASK:  # CNN channel pruning: its own stages and outputs
        from .image import run_image_recipe

        return run_image_recipe(recipe, quiet=quiet)
    log = StageLog(quiet=quiet)
    task = get_task(recipe.data.task)
    out_dir = Path(recipe.output.dir)
    check_output_dir(out_dir)
    if recipe.output.export == "compressed-tensors":  # fail before training, not after, when the package is missing
        from ...serving.compressed_tensors import require_compressed_tensors

        require_compressed_tensors()
    with quiet_libraries(quiet), tempfile.TemporaryDirectory(prefix="hfprune-run-") as work:
        set_seed(recipe.seed)
        with log.stage("load") as note:
            d = recipe.data
            data = load_task_data(task, data_dir=d.data_dir, train_file=d.train_file,
                                  validation_file=d.validation_file, max_train_samples=d.max_train_samples,
                                  max_eval_samples=d.max_eval_samples, seed=recipe.seed)
            model, tokenizer, head = load_classifier(recipe.model.name_or_path, task,
                                                     allow_new_head=recipe.finetune.steps > 0)
            dense_structure = model_structure(model)
            dense_record = copy.deepcopy(get_record(model.config))  # set when starting from a pruned checkpoint
            if recipe.prune.layers >= dense_structure["num_layers"]:
                raise ValueError(f"prune.layers={recipe.prune.layers} would remove every layer "
                                 f"(the model has {dense_structure['num_layers']})")
            encoded = tokenize(data, tokenizer, task, recipe.model.max_length, show_progress=not quiet)
            eval_sets = {s: encoded[s] for s in task.eval_splits if s in encoded}  # files: the first one only
            note["summary"] = (f"{task.name}: {encoded['train'].num_rows} train / "
                               f"{eval_sets[task.eval_splits[0]].num_rows} eval examples; "
                               f"{dense_structure['num_layers']} layers x {max(dense_structure['heads'])} heads; "
                               f"classification head {head}")
        finetune = None
        if recipe.finetune.steps:
            with log.stage("finetune") as note:
                trainer = make_trainer(model, tokenizer, task, train_dataset=encoded["train"], train=recipe.finetune,
                                       eval_batch_size=recipe.eval.batch_size, seed=recipe.seed, quiet=quiet,
                                       callbacks=_callbacks(recipe.finetune), work_dir=Path(work) / "finetune")
                finetune = train_stage(trainer)
                note["summary"] = f"{finetune['steps']} steps, mean loss {finetune['loss']:.4f}"
        # One evaluation Trainer (its train dataloader feeds the scorers) for the dense model and the sweep.
        evaluator = make_trainer(model, tokenizer, task, train_dataset=encoded["train"],
                                 train=TrainConfig(batch_size=recipe.finetune.batch_size),
                                 eval_batch_size=recipe.eval.batch_size, seed=recipe.seed, quiet=quiet,
                                 work_dir=Path(work) / "eval")
        with log.stage("evaluate dense") as note:
            dense_metrics = evaluate_splits(evaluator, task, eval_sets)
            note["summary"] = _fmt(dense_metrics, task)
        model.eval()
        seq_len = recipe.eval.latency_seq_len
        dense_costs = model_costs(model, seq_len)
        dense_copy = copy.deepcopy(model).to("cpu")  # for a back-to-back latency comparison at the end
        # Distillation recovery learns from the model as it is now, before pruning (a frozen copy).
        teacher = copy.deepcopy(model) if recipe.recover.steps and recipe.recover.distill is not None else None
        if recipe.prune.budget:
            scores, plan = {}, None  # the budget search scores, selects and prunes in one step, below
        else:
            scores, plan = _score_and_select(model, scoring_batches(evaluator), recipe, dense_structure, log, quiet)
        sweep = []
        if recipe.prune.sweep:
            sweep = _sweep(model, evaluator, task, eval_sets[task.eval_splits[0]], scores["heads"], recipe, log)
        with log.stage("prune") as note:
            import hfprune

            if recipe.prune.budget:
                plan = _prune_to_budget(model, scoring_batches(evaluator), recipe, dense_structure, quiet)
            else:
                hfprune.prune(model, plan)
            pruned_structure = model_structure(model)
            note["summary"] = (f"heads {sum(dense_structure['heads'])} -> {sum(pruned_structure['heads'])}, "
                               f"FFN {sum(dense_structure['ffn'])} -> {sum(pruned_structure['ffn'])}, "
                               f"layers {dense_structure['num_layers']} -> {pruned_structure['num_layers']}")
        before_recovery, recover = None, None
        if recipe.recover.steps:
            with log.stage("evaluate pruned (before recovery)") as note:
                before_recovery = evaluate_splits(evaluator, task, eval_sets)
                note["summary"] = _fmt(before_recovery, task)
            with log.stage("recover") as note:
                trainer = make_trainer(model, tokenizer, task, train_dataset=encoded["train"], train=recipe.recover,
                                       eval_batch_size=recipe.eval.batch_size, seed=recipe.seed + 1, quiet=quiet,
                                       callbacks=_callbacks(recipe.recover), work_dir=Path(work) / "recover",
                                       teacher=teacher)
                recover = train_stage(trainer)
                if teacher is not None:
                    recover["distill"] = {**recipe.recover.distill, "trainer": type(trainer).__name__}
                note["summary"] = f"{recover['steps']} steps, mean loss {recover['loss']:.4f}"
        with log.stage("evaluate pruned") as note:
            pruned_metrics = evaluate_splits(evaluator, task, eval_sets)
            note["summary"] = _fmt(pruned_metrics, task)
        model.eval()
        pruned_costs = model_costs(model, seq_len)
        with log.stage("latency") as note:
            batch = _latency_batch(data, tokenizer, task, recipe)
            reps = recipe.eval.latency_repeats
            # Alternate the two models so that a load spike on a shared machine hits both alike.
            rounds = [(measure_latency(dense_copy, batch, reps), measure_latency(model, batch, reps))
                      for _ in range(2)]
            dense_t, pruned_t = min(r[0] for r in rounds), min(r[1] for r in rounds)
            del dense_copy
            note["summary"] = (f"batch {batch['input_ids'].shape[0]} x {seq_len} tokens, {torch.get_num_threads()} "
                               f"threads: dense {dense_t * 1e3:.1f} ms, pruned {pruned_t * 1e3:.1f} ms "
                               f"({dense_t / pruned_t:.2f}x)")
        run = {
            "task": task, "recipe": recipe, "plan": plan, "scores": scores, "sweep": sweep, "head": head,
            "finetune": finetune, "recover": recover, "dense_structure": dense_structure, "dense_record": dense_record,
            "pruned_structure": pruned_structure, "dense_metrics": dense_metrics, "pruned_metrics": pruned_metrics,
            "before_recovery": before_recovery, "dense_costs": dense_costs, "pruned_costs": pruned_costs,
            "dense_latency": dense_t, "pruned_latency": pruned_t, "latency_batch": batch, "log": log,
        }
        with log.stage("save") as note:
            results = write_outputs(model, tokenizer, run, out_dir)
            note["summary"] = f"{out_dir} (reloaded logits max |diff| {results['reload_max_abs_diff']:.2e})"
    if recipe.output.push_to_hub:
        with log.stage("push") as note:
            note["summary"] = push_outputs(out_dir, recipe.output.push_to_hub, private=recipe.output.private)
    return results
