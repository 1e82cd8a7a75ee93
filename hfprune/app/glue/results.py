"""results.json of a GLUE run: what it measured, as plain JSON (NaN written as null)."""

from __future__ import annotations

from dataclasses import asdict

from ..common.render import clean, machine_info, results_header


def _sources(record: dict | None, count: int) -> list[int]:
    return [spec["source_index"] for spec in record["layers"]] if record else list(range(count))


def per_layer_rows(dense_costs: dict, pruned_costs: dict, record: dict | None,
                   dense_record: dict | None = None) -> list[dict]:
    """One row per layer of the "before" model: heads, FFN, params and FLOPs before and after (0 after for a removed
    layer).

    Layers are matched through their `source_index` in the records: `record` is the pruned model's, `dense_record`
    the "before" model's when that one was itself pruned already (a run that starts from a pruned checkpoint);
    without it the "before" model is the original one (layer i has source index i).
    """
    sources = _sources(record, len(pruned_costs["per_layer"]))
    after = dict(zip(sources, pruned_costs["per_layer"]))
    dense_sources = _sources(dense_record, len(dense_costs["per_layer"]))
    rows = []
    for i, before in enumerate(dense_costs["per_layer"]):
        now = after.get(dense_sources[i])
        rows.append({
            "layer": i, "removed": now is None,
            "heads_before": before["heads"], "heads_after": now["heads"] if now else 0,
            "ffn_before": before["ffn"], "ffn_after": now["ffn"] if now else 0,
            "params_before": before["params"], "params_after": now["params"] if now else 0,
            "flops_before": before["flops"], "flops_after": now["flops"] if now else 0,
        })
    return rows


def build_results(run: dict, record: dict | None, reload_diff: float) -> dict:
    """Assemble results.json from the runner's state (see `hfprune.app.glue.run.run_glue`)."""
    task, recipe, plan = run["task"], run["recipe"], run["plan"]
    main_split = task.eval_splits[0]
    dense, pruned = run["dense_costs"], run["pruned_costs"]
    results = {
        **results_header(),
        "task": task.name,
        "metric": task.main_metric,
        "metrics": list(task.metrics),
        "eval_split": main_split,
        "model": recipe.model.name_or_path,
        "classification_head": run["head"],
        "dense": {
            "metrics": run["dense_metrics"], "metric": run["dense_metrics"][main_split][task.main_metric],
            "params": dense["params"], "flops": dense["flops"], "latency_ms": run["dense_latency"] * 1e3,
            "structure": run["dense_structure"],
        },
        "pruned": {
            "metrics": run["pruned_metrics"], "metric": run["pruned_metrics"][main_split][task.main_metric],
            "metrics_before_recovery": run["before_recovery"],
            "params": pruned["params"], "flops": pruned["flops"], "latency_ms": run["pruned_latency"] * 1e3,
            "structure": run["pruned_structure"],
        },
        "params_ratio": pruned["params"] / dense["params"],
        "flops_ratio": pruned["flops"] / dense["flops"],
        "speedup": run["dense_latency"] / run["pruned_latency"],
        "latency": {"batch_size": int(run["latency_batch"]["input_ids"].shape[0]),
                    "seq_len": int(run["latency_batch"]["input_ids"].shape[1]), "device": "cpu",
                    "statistic": f"min over 2 alternating rounds of the median of {recipe.eval.latency_repeats} "
                                 "passes"},
        "flops_seq_len": dense["seq_len"],
        "removed": {"heads": plan.num_heads(), "neurons": plan.num_neurons(), "layers": list(plan.layers)},
        "plan": {k: v for k, v in plan.to_dict().items()},
        "per_layer": per_layer_rows(dense, pruned, record, run.get("dense_record")),
        "head_importance": run["scores"].get("heads"),
        "layer_importance": run["scores"].get("layers"),
        "sweep": run["sweep"],
        "training": {"finetune": run["finetune"], "recover": run["recover"]},
        "eval_examples": {"used": run["eval_sets"][main_split].num_rows,
                          "of": run.get("split_sizes", {}).get(main_split, run["eval_sets"][main_split].num_rows)},
        "stage_seconds": dict(run["log"].seconds),
        "wall_seconds": run["log"].total_seconds,
        "reload_max_abs_diff": reload_diff,
        "machine": machine_info(),
        "recipe": asdict(recipe),
    }
    return clean(results)
