"""Running a GLUE recipe: optional fine-tune -> score -> select -> prune -> optional recovery -> evaluate -> save.

A thin shell over the library stages: `transformers.Trainer` trains and evaluates, `hfprune.head_importance` /
`neuron_importance` / `layer_importance` score (on the Trainer's own training dataloader), `select_*` turn scores into
a `PruningPlan`, `hfprune.prune` removes the units, and `writer.write_outputs` writes the outputs atomically.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path

import torch

import hfprune

from ...criteria import closest_criterion
from ...flops import model_costs
from ...plan import PruningPlan
from ...serving.compressed_tensors import require_compressed_tensors
from ...structure import get_record, model_structure
from ..common.outputs import check_output_dir, push_outputs
from ..common.progress import StageLog, quiet_libraries, show_bars
from ..common.training import compare_latency, make_trainer, train_stage
from .data import load_task_data, tokenize
from .metrics import compute_metrics_fn
from .modeling import load_classifier
from .options import GlueRecipe, GlueTrain
from .tasks import TaskSpec, get_task
from .writer import write_outputs


def glue_trainer(model, tokenizer, task: TaskSpec, **kwargs):
    """`common.training.make_trainer` with the task's padding collator and GLUE metrics."""
    from transformers import DataCollatorWithPadding

    return make_trainer(model, processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                        compute_metrics=compute_metrics_fn(task), **kwargs)


def evaluate_splits(trainer, task: TaskSpec, eval_sets: dict) -> dict[str, dict[str, float]]:
    """The task's metrics on each eval split: `{split: {metric: value}}`."""
    out = {}
    for split, dataset in eval_sets.items():
        raw = trainer.evaluate(eval_dataset=dataset, metric_key_prefix="eval")
        out[split] = {name: raw[f"eval_{name}"] for name in task.metrics}
        out[split]["loss"] = raw.get("eval_loss")
    return out


def _fmt(metrics: dict, task) -> str:
    split = metrics[task.eval_splits[0]]
    return ", ".join(f"{m} {split[m]:.4f}" for m in task.metrics)


def _latency_batch(data, tokenizer, task, recipe: GlueRecipe) -> dict:
    rows = data[task.eval_splits[0]]
    n = recipe.eval.latency_batch_size
    idx = [i % rows.num_rows for i in range(n)]
    texts = [[rows[c][i] for i in idx] for c in task.text_columns]
    return dict(tokenizer(*texts, padding="max_length", truncation=True, max_length=recipe.eval.latency_seq_len,
                          return_tensors="pt"))


def _callbacks(train: GlueTrain) -> list:
    if not train.layerdrop:
        return []
    return [hfprune.LayerDropCallback(p=train.layerdrop, mode=train.layerdrop_mode)]


def _score_and_select(model, loader, recipe: GlueRecipe, structure: dict, log: StageLog, quiet: bool):
    cfg = recipe.prune
    scores: dict = {}
    with log.stage("score") as note:
        # One name for both unit kinds; a head-only criterion scores neurons with the registry's first neuron
        # criterion of the same pass (Michel et al.'s gate gradients -> Taylor).
        neuron_criterion = closest_criterion(cfg.criterion, "neurons")
        common = {"max_batches": cfg.score_batches, "show_progress": show_bars(quiet)}
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


def _prune_to_budget(model, loader, recipe: GlueRecipe, structure: dict, quiet: bool) -> PruningPlan:
    """`hfprune.prune_to_budget` on the training batches; FLOPs and latency at the report's sequence length."""
    cfg = recipe.prune
    plan = hfprune.prune_to_budget(model, loader, **cfg.budget, seq_len=recipe.eval.latency_seq_len,
                                   num_samples=cfg.budget_samples, tune=cfg.budget_tune,
                                   show_progress=show_bars(quiet))
    plan.meta.update({"criterion": "kwon2022", "model_structure": structure})
    return plan


def _sweep(model, trainer, task, eval_set, head_scores, recipe: GlueRecipe, log: StageLog) -> list[dict]:
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


def _load(run: dict) -> None:
    """Data, model (with a head of the task's size) and tokenized splits into `run`."""
    recipe, task = run["recipe"], run["task"]
    with run["log"].stage("load") as note:
        d = recipe.data
        run["data"] = load_task_data(task, data_dir=d.data_dir, train_file=d.train_file,
                                     validation_file=d.validation_file, max_train_samples=d.max_train_samples,
                                     max_eval_samples=d.max_eval_samples, seed=recipe.seed,
                                     sizes=run.setdefault("split_sizes", {}))
        model, tokenizer, run["head"] = load_classifier(recipe.model.name_or_path, task,
                                                        allow_new_head=recipe.finetune.steps > 0)
        structure = model_structure(model)
        run["dense_record"] = copy.deepcopy(get_record(model.config))  # set when starting from a pruned checkpoint
        if recipe.prune.layers >= structure["num_layers"]:
            raise ValueError(f"prune.layers={recipe.prune.layers} would remove every layer "
                             f"(the model has {structure['num_layers']})")
        encoded = tokenize(run["data"], tokenizer, task, recipe.model.max_length, show_progress=show_bars(run["quiet"]))
        run["eval_sets"] = {s: encoded[s] for s in task.eval_splits if s in encoded}  # files: the first one only
        run.update(model=model, tokenizer=tokenizer, train_set=encoded["train"], dense_structure=structure)
        note["summary"] = (f"{task.name}: {encoded['train'].num_rows} train / "
                           f"{run['eval_sets'][task.eval_splits[0]].num_rows} eval examples; "
                           f"{structure['num_layers']} layers x {max(structure['heads'])} heads; "
                           f"classification head {run['head']}")


def _trainer(run: dict, stage: str, **kwargs):
    recipe = run["recipe"]
    return glue_trainer(run["model"], run["tokenizer"], run["task"], train_dataset=run["train_set"],
                        eval_batch_size=recipe.eval.batch_size, quiet=run["quiet"], work_dir=run["work"] / stage,
                        **kwargs)


def _train(run: dict, stage: str, teacher=None) -> dict:
    """The fine-tune or recovery stage (`Trainer.train()`); returns its `{"steps", "loss"}`."""
    recipe = run["recipe"]
    train = getattr(recipe, stage)
    with run["log"].stage(stage) as note:
        trainer = _trainer(run, stage, train=train, seed=recipe.seed + (stage == "recover"),
                           callbacks=_callbacks(train), teacher=teacher)
        out = train_stage(trainer)
        if teacher is not None:
            out["distill"] = {**recipe.recover.distill, "trainer": type(trainer).__name__}
        note["summary"] = f"{out['steps']} steps, mean loss {out['loss']:.4f}"
    return out


def _evaluate(run: dict, stage: str) -> dict:
    with run["log"].stage(stage) as note:
        metrics = evaluate_splits(run["evaluator"], run["task"], run["eval_sets"])
        note["summary"] = _fmt(metrics, run["task"])
    return metrics


def _prune(run: dict) -> None:
    """Score and select (or search a budget), the optional sweep, and the removal itself."""
    recipe, model, log = run["recipe"], run["model"], run["log"]
    loader, dense = run["evaluator"].get_train_dataloader(), run["dense_structure"]
    scores, plan = {}, None  # with a budget, the search scores, selects and prunes in one step, below
    if not recipe.prune.budget:
        scores, plan = _score_and_select(model, loader, recipe, dense, log, run["quiet"])
    run["sweep"] = []
    if recipe.prune.sweep:
        eval_set = run["eval_sets"][run["task"].eval_splits[0]]
        run["sweep"] = _sweep(model, run["evaluator"], run["task"], eval_set, scores["heads"], recipe, log)
    with log.stage("prune") as note:
        if recipe.prune.budget:
            plan = _prune_to_budget(model, loader, recipe, dense, run["quiet"])
        else:
            hfprune.prune(model, plan)
        pruned = model_structure(model)
        note["summary"] = (f"heads {sum(dense['heads'])} -> {sum(pruned['heads'])}, "
                           f"FFN {sum(dense['ffn'])} -> {sum(pruned['ffn'])}, "
                           f"layers {dense['num_layers']} -> {pruned['num_layers']}")
    run.update(scores=scores, plan=plan, pruned_structure=pruned)


def _latency(run: dict, dense_copy) -> None:
    recipe = run["recipe"]
    with run["log"].stage("latency") as note:
        batch = _latency_batch(run["data"], run["tokenizer"], run["task"], recipe)
        dense_t, pruned_t = compare_latency(dense_copy, run["model"], batch, recipe.eval.latency_repeats)
        note["summary"] = (f"batch {batch['input_ids'].shape[0]} x {recipe.eval.latency_seq_len} tokens, "
                           f"{torch.get_num_threads()} threads: dense {dense_t * 1e3:.1f} ms, pruned "
                           f"{pruned_t * 1e3:.1f} ms ({dense_t / pruned_t:.2f}x)")
    run.update(dense_latency=dense_t, pruned_latency=pruned_t, latency_batch=batch)


def _stages(run: dict) -> None:
    """Every stage between loading and saving, in order; each adds its results to `run`."""
    recipe, seq_len = run["recipe"], run["recipe"].eval.latency_seq_len
    run["finetune"] = _train(run, "finetune") if recipe.finetune.steps else None
    # One evaluation Trainer (its train dataloader feeds the scorers) for the dense model and the sweep.
    run["evaluator"] = _trainer(run, "eval", train=GlueTrain(batch_size=recipe.finetune.batch_size), seed=recipe.seed)
    run["dense_metrics"] = _evaluate(run, "evaluate dense")
    model = run["model"].eval()
    run["dense_costs"] = model_costs(model, seq_len)
    dense_copy = copy.deepcopy(model).to("cpu")  # for a back-to-back latency comparison at the end
    # Distillation recovery learns from the model as it is now, before pruning (a frozen copy).
    teacher = copy.deepcopy(model) if recipe.recover.steps and recipe.recover.distill is not None else None
    _prune(run)
    run["before_recovery"] = run["recover"] = None
    if recipe.recover.steps:
        run["before_recovery"] = _evaluate(run, "evaluate pruned (before recovery)")
        run["recover"] = _train(run, "recover", teacher=teacher)
    run["pruned_metrics"] = _evaluate(run, "evaluate pruned")
    run["pruned_costs"] = model_costs(model.eval(), seq_len)
    _latency(run, dense_copy)


def run_glue(recipe: GlueRecipe, *, quiet: bool = False) -> dict:
    """Run a GLUE `recipe` end to end and write its outputs to `recipe.output.dir`.

    Args:
        recipe (`GlueRecipe`): validated options (`hfprune.app.apps.load_recipe`, or `hfprune prune` flags).
        quiet (`bool`, defaults to `False`): no progress bars, no stage lines.

    Returns:
        `dict`: the content of results.json.

    Example:
        ```python
        >>> from hfprune.app.apps import load_recipe
        >>> results = run_glue(load_recipe("recipes/sst2.yaml", ["data.data_dir=../shared/data/glue"]))
        >>> results["pruned"]["metrics"]["validation"]["accuracy"]
        ```
    """
    from transformers import set_seed

    out_dir = Path(recipe.output.dir)
    check_output_dir(out_dir)
    if recipe.output.export == "compressed-tensors":  # fail before training, not after, when the package is missing
        require_compressed_tensors()
    log = StageLog(quiet=quiet)
    with quiet_libraries(quiet), tempfile.TemporaryDirectory(prefix="hfprune-run-") as work:
        set_seed(recipe.seed)
        run = {"recipe": recipe, "task": get_task(recipe.data.task), "log": log, "quiet": quiet, "work": Path(work)}
        _load(run)
        _stages(run)
        with log.stage("save") as note:
            results = write_outputs(run["model"], run["tokenizer"], run, out_dir)
            note["summary"] = f"{out_dir} (reloaded logits max |diff| {results['reload_max_abs_diff']:.2e})"
    if recipe.output.push_to_hub:
        with log.stage("push") as note:
            note["summary"] = push_outputs(out_dir, recipe.output.push_to_hub, private=recipe.output.private)
    return results
