"""Running a causal-LM recipe: the application behind `hfprune prune --task causal-lm`.

One run: load a decoder (a folder, a Hub id, or a GGUF file with `model.gguf_file`), cut the text file into
calibration windows and a held-out evaluation text, measure perplexity, prune (whole layers, heads / FFN neurons, MoE
experts, or weight-level sparsity with a weight criterion of the registry), optionally recover (`recover.py`: LM loss or
distillation from the model before pruning, all weights or merged LoRA; windows of the text file apart from the
calibration windows, steps x batch_size x seq_len tokens), measure perplexity again (and lm-eval tasks on the dense
and final model), and write model + tokenizer + results.json + report.md + plots atomically.
"""

from __future__ import annotations

import math

import hfprune

from ...arch import get_adapter
from ...criteria import get_criterion
from ..common.outputs import check_output_dir
from ..common.progress import StageLog, block_progress, quiet_libraries
from .data import eval_windows, load_decoder, load_model, split_texts
from .harness import run_lm_eval
from .options import CausalLMRecipe, LMPrune
from .recover import load_teacher, recover, recovery_batches
from .report import build_results
from .writer import write_outputs


def structured_plan(model, calib: list[dict], prune: LMPrune, seed: int = 0):
    """Scores -> PruningPlan for layers / heads / FFN / MoE experts; also returns the scores (for the report)."""
    plan, scores = hfprune.PruningPlan(), {}
    kwargs = {"show_progress": False}
    seeded = {"seed": seed} if prune.criterion == "random" else {}
    if prune.heads is not None:
        heads = hfprune.head_importance(model, calib, criterion=prune.criterion, **kwargs, **seeded)
        scores["heads"] = heads
        plan.heads = hfprune.select_heads(heads, ratio=prune.heads, model=model, uniform=prune.uniform).heads
    if prune.hidden is not None:
        scores["hidden"] = hfprune.hidden_importance(model, calib, criterion=prune.criterion, **kwargs, **seeded)
        plan.hidden = hfprune.select_hidden(scores["hidden"], ratio=prune.hidden,
                                            round_to=_hidden_multiple(model, plan)).hidden
    if prune.ffn is not None:
        neurons = hfprune.neuron_importance(model, calib, criterion=prune.criterion, **kwargs, **seeded)
        plan.neurons = hfprune.select_neurons(neurons, ratio=prune.ffn, uniform=prune.uniform,
                                              round_to=prune.round_to if prune.uniform else None).neurons
    if prune.experts is not None:
        experts = hfprune.expert_importance(model, calib, criterion=prune.criterion, seed=seed)
        scores["experts"] = experts
        plan.experts = hfprune.select_experts(experts, ratio=prune.experts, uniform=True,
                                              min_keep=int(model.config.num_experts_per_tok)).experts
    if prune.layers is not None:
        extra = {"n": prune.layers} if prune.layer_method == "angular" else {}
        layers = hfprune.layer_importance(model, calib, method=prune.layer_method, **kwargs, **extra)
        scores["layers"] = layers
        plan.layers = hfprune.select_layers(layers, count=prune.layers,
                                            contiguous=prune.layer_method == "angular").layers
    return plan, scores


def _hidden_multiple(model, plan) -> int:
    """The kept hidden width's multiple: 8 and every kept head count (LlamaConfig checks hidden % heads)."""
    heads = int(model.config.num_attention_heads)
    kept = {heads - len((plan.heads or {}).get(i, ())) for i in range(int(model.config.num_hidden_layers))}
    return math.lcm(8, *kept)


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
    blocks = get_adapter(model).layers(model)
    if prune.weights:
        with log.stage("prune") as note, block_progress(blocks, log, "prune"):
            # The block-by-block criteria can skip their copy of the original weights: the run finalizes at once.
            extra = {"keep_original": False} if get_criterion(prune.criterion, "weights").sequential else {}
            hfprune.sparsify(model, prune.sparsity, criterion=prune.criterion, pattern=prune.pattern or "unstructured",
                             dataloader=calib, **extra).finalize()
            note["summary"] = f"{prune.criterion}, {prune.pattern or prune.sparsity}"
        return None, {}
    with log.stage("score") as note, block_progress(blocks, log, "score"):
        plan, scores = structured_plan(model, calib, prune, recipe.seed)
        note["summary"] = f"{', '.join(scores) or 'neurons'} scored ({prune.criterion})"
    with log.stage("prune") as note:
        hfprune.prune(model, plan)
        note["summary"] = (f"{len(plan.hidden or [])} hidden channels, {plan.num_heads()} heads, "
                           f"{plan.num_neurons()} FFN neurons, {plan.count('experts')} experts, layers {plan.layers}")
    return plan, scores


def _perplexity(model, evals: list[dict], name: str, log: StageLog) -> float:
    with log.stage(f"eval_{name}") as note:
        value = hfprune.perplexity(model, evals)
        note["summary"] = f"perplexity ({name}) {value:.3f}"
    return value


def _lm_eval(model, tokenizer, recipe: CausalLMRecipe, name: str, log: StageLog) -> dict | None:
    options = recipe.evaluate
    if not options.tasks:
        return None
    with log.stage(f"lm_eval_{name}") as note:
        with quiet_libraries(True):
            scores = run_lm_eval(model, tokenizer, options.tasks, recipe.data.batch_size, options.lm_eval_include,
                                 options.lm_eval_limit)
        note["summary"] = "; ".join(f"{task} {values}" for task, values in scores.items())
    return scores


def _recover(model, tokenizer, calib_lines: list[str], recipe: CausalLMRecipe, teacher, log: StageLog):
    """(model, step losses, the recovery's record for the report)."""
    with log.stage("recover") as note:
        batches, budget = recovery_batches(tokenizer, calib_lines, recipe)
        model, losses, method = recover(model, batches, recipe, teacher)
        lora = f" + LoRA r={method['lora']}" if method["lora"] else ""
        note["summary"] = (f"{method['loss']}{lora}, "
                           f"{budget['steps']} steps x {budget['batch_size']} x {budget['seq_len']} = "
                           f"{budget['tokens']:,} tokens, last loss {losses[-1]:.4f}")
    return model, losses, {**method, **budget}


def run_causal_lm(recipe: CausalLMRecipe, *, quiet: bool = False) -> dict:
    """Run one causal-LM pruning job end to end (see the module docstring); returns results.json's content."""
    check_output_dir(recipe.output.dir)  # before any work: never overwrite a folder hfprune did not write
    log, data = StageLog(quiet=quiet), recipe.data
    with log.stage("load") as note:
        calib_lines, eval_lines = split_texts(data)
        with quiet_libraries(quiet):
            model, tokenizer = load_model(recipe.model.name_or_path, recipe.model.gguf_file, quiet)
            teacher = load_teacher(recipe, model, load_decoder)
        note["summary"] = f"{type(model).__name__}, {_param_count(model):,} parameters"
    with log.stage("data") as note:
        calib = hfprune.calibration_batches(tokenizer, calib_lines, num_samples=data.num_samples, seq_len=data.seq_len,
                                            seed=recipe.seed, batch_size=data.batch_size, model=model)
        evals = eval_windows(tokenizer, eval_lines, data.seq_len, data.eval_samples)
        note["summary"] = f"{len(calib)} calibration batches, {len(evals)} evaluation windows"
    before = {"structure": hfprune.model_structure(model), "params": _param_count(model)}
    ppl = {"dense": _perplexity(model, evals, "dense", log)}
    lm_eval = {"dense": _lm_eval(model, tokenizer, recipe, "dense", log)}
    plan, scores = _prune(model, calib, recipe, log)
    ppl["pruned"] = _perplexity(model, evals, "pruned", log)
    losses, recovery = [], None
    if recipe.recover.steps:
        model, losses, recovery = _recover(model, tokenizer, calib_lines, recipe, teacher, log)
        teacher = None
        ppl["recovered"] = _perplexity(model, evals, "recovered", log)
    lm_eval["final"] = _lm_eval(model, tokenizer, recipe, "final", log)
    after = {"structure": hfprune.model_structure(model), "params": _param_count(model),
             "weight_sparsity": _zero_fraction(model)}
    run = {"recipe": recipe, "perplexity": ppl, "log": log, "before": before, "after": after, "plan": plan,
           "scores": scores, "losses": losses, "eval_windows": len(evals), "recovery": recovery,
           "lm_eval": lm_eval if lm_eval["dense"] is not None else None}
    with log.stage("save") as note, quiet_libraries(quiet):
        results = write_outputs(model, tokenizer, build_results(run), scores, recipe.output.dir, recipe.output.plots)
        how = "plain from_pretrained" if not results["trust_remote_code"] else "trust_remote_code=True"
        note["summary"] = f"{recipe.output.dir} (loads as {results['loads_as']} with {how}: {results['loads_because']})"
    return results
