"""Running a causal-LM recipe: the application behind `hfprune prune --task causal-lm`.

One run: load a decoder (a folder, a Hub id, or a GGUF file with `model.gguf_file`), cut the text file into
calibration windows and a held-out evaluation text, measure perplexity, prune (whole layers, heads / FFN neurons, or
weight-level sparsity with a weight criterion of the registry), optionally recover with a few steps of LM
fine-tuning, measure perplexity again, and write model + tokenizer + results.json + report.md + plots atomically.
"""

from __future__ import annotations

import torch

import hfprune

from ...arch import get_adapter
from ...criteria import get_criterion
from ..common.outputs import check_output_dir
from ..common.progress import StageLog, quiet_libraries
from .data import eval_windows, load_model, split_texts
from .options import CausalLMRecipe, LMPrune
from .report import build_results
from .writer import write_outputs


def structured_plan(model, calib: list[dict], prune: LMPrune, seed: int = 0):
    """Scores -> PruningPlan for layers / heads / FFN; also returns the scores (for the report)."""
    if prune.params is not None:
        axes = tuple(a.strip() for a in prune.axes.split(","))
        plan = hfprune.select_width(model, calib, params=prune.params, axes=axes, depth=prune.layers or 0,
                                    ffn_round_to=prune.round_to)
        return plan, {}
    plan, scores = hfprune.PruningPlan(), {}
    kwargs = {"show_progress": False}
    seeded = {"seed": seed} if prune.criterion == "random" else {}
    if prune.heads is not None:
        heads = hfprune.head_importance(model, calib, criterion=prune.criterion, **kwargs, **seeded)
        scores["heads"] = heads
        plan.heads = hfprune.select_heads(heads, ratio=prune.heads, model=model, uniform=prune.uniform).heads
    if prune.ffn is not None:
        neurons = hfprune.neuron_importance(model, calib, criterion=prune.criterion, **kwargs, **seeded)
        plan.neurons = hfprune.select_neurons(neurons, ratio=prune.ffn, uniform=prune.uniform,
                                              round_to=prune.round_to if prune.uniform else None).neurons
    if prune.layers is not None:
        extra = {"n": prune.layers} if prune.layer_method == "angular" else {}
        layers = hfprune.layer_importance(model, calib, method=prune.layer_method, **kwargs, **extra)
        scores["layers"] = layers
        plan.layers = hfprune.select_layers(layers, count=prune.layers,
                                            contiguous=prune.layer_method == "angular").layers
    return plan, scores


def lm_recover(model, batches: list[dict], steps: int, learning_rate: float) -> list[float]:
    """A few steps of causal-LM fine-tuning (AdamW) on `batches`, cycling; returns the loss of each step."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=0.0)
    losses = []
    model.train()
    try:
        for step in range(steps):
            batch = batches[step % len(batches)]
            loss = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                         labels=batch["input_ids"]).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(float(loss.detach()))
    finally:
        model.eval()
    return losses


def _param_count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def _zero_fraction(model) -> float:
    adapter = get_adapter(model)
    total = zeros = 0
    for block in adapter.layers(model):
        for path in adapter.linear_paths():
            weight = block.get_submodule(path).weight
            total += weight.numel()
            zeros += int((weight == 0).sum())
    return zeros / max(total, 1)


def _prune(model, calib: list[dict], recipe: CausalLMRecipe, log: StageLog):
    """Weight sparsity (no plan) or a structured plan; returns (plan or None, scores)."""
    prune = recipe.prune
    if prune.weights:
        with log.stage("prune") as note:
            # The block-by-block criteria can skip their copy of the original weights: the run finalizes at once.
            extra = {"keep_original": False} if get_criterion(prune.criterion, "weights").sequential else {}
            hfprune.sparsify(model, prune.sparsity, criterion=prune.criterion, pattern=prune.pattern or "unstructured",
                             dataloader=calib, **extra).finalize()
            note["summary"] = f"{prune.criterion}, {prune.pattern or prune.sparsity}"
        return None, {}
    with log.stage("score") as note:
        plan, scores = structured_plan(model, calib, prune, recipe.seed)
        note["summary"] = f"{', '.join(scores) or 'neurons'} scored ({prune.criterion})"
    with log.stage("prune") as note:
        hfprune.prune(model, plan)
        note["summary"] = f"{plan.num_heads()} heads, {plan.num_neurons()} FFN neurons, layers {plan.layers}"
    return plan, scores


def _perplexity(model, evals: list[dict], name: str, log: StageLog) -> float:
    with log.stage(f"eval_{name}") as note:
        value = hfprune.perplexity(model, evals)
        note["summary"] = f"perplexity ({name}) {value:.3f}"
    return value


def run_causal_lm(recipe: CausalLMRecipe, *, quiet: bool = False) -> dict:
    """Run one causal-LM pruning job end to end (see the module docstring); returns results.json's content."""
    check_output_dir(recipe.output.dir)  # before any work: never overwrite a folder hfprune did not write
    log, data = StageLog(quiet=quiet), recipe.data
    with log.stage("load") as note:
        calib_lines, eval_lines = split_texts(data)
        with quiet_libraries(quiet):
            model, tokenizer = load_model(recipe.model.name_or_path, recipe.model.gguf_file)
        note["summary"] = f"{type(model).__name__}, {_param_count(model):,} parameters"
    with log.stage("data") as note:
        calib = hfprune.calibration_batches(tokenizer, calib_lines, num_samples=data.num_samples, seq_len=data.seq_len,
                                            seed=recipe.seed, batch_size=data.batch_size, model=model)
        evals = eval_windows(tokenizer, eval_lines, data.seq_len, data.eval_samples)
        note["summary"] = f"{len(calib)} calibration batches, {len(evals)} evaluation windows"
    before = {"structure": hfprune.model_structure(model), "params": _param_count(model)}
    ppl = {"dense": _perplexity(model, evals, "dense", log)}
    plan, scores = _prune(model, calib, recipe, log)
    ppl["pruned"] = _perplexity(model, evals, "pruned", log)
    losses = []
    if recipe.recover.steps:
        with log.stage("recover") as note:
            steps = recipe.recover.steps
            train = hfprune.calibration_batches(tokenizer, calib_lines, num_samples=steps * data.batch_size,
                                                seq_len=data.seq_len, seed=recipe.seed + 1,
                                                batch_size=data.batch_size, model=model)
            losses = lm_recover(model, train, steps, recipe.recover.learning_rate)
            note["summary"] = f"{steps} steps, last loss {losses[-1]:.4f}"
        ppl["recovered"] = _perplexity(model, evals, "recovered", log)
    after = {"structure": hfprune.model_structure(model), "params": _param_count(model),
             "weight_sparsity": _zero_fraction(model)}
    run = {"recipe": recipe, "perplexity": ppl, "log": log, "before": before, "after": after, "plan": plan,
           "scores": scores, "losses": losses, "eval_windows": len(evals)}
    with log.stage("save") as note:
        results = write_outputs(model, tokenizer, build_results(run), scores, recipe.output.dir, recipe.output.plots)
        note["summary"] = f"{recipe.output.dir} (loads as {results['loads_as']})"
    return results
