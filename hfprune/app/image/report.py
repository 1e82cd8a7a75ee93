"""The report of an image-classification (CNN channel) run: results.json, report.md, the channel-width plot, the
model card (the summary lines are `common.render.print_summary`, as for GLUE: the results have the same keys)."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from ..common.render import bar_chart, clean, machine_info, results_header
from ..common.render import big as _big
from ..common.render import num as _num

SPLIT = "validation"


def build_image_results(run: dict, reload_diff: float) -> dict:
    recipe, plan = run["recipe"], run["plan"]
    dense, pruned = run["dense_costs"], run["pruned_costs"]
    before = run["before_recovery"]
    results = {
        **results_header(),
        "task": "image-classification", "metric": "accuracy", "metrics": ["accuracy"], "eval_split": SPLIT,
        "model": recipe.model.name_or_path, "classification_head": run["head"],
        "dense": {"metrics": {SPLIT: run["dense_metrics"]}, "metric": run["dense_metrics"]["accuracy"],
                  "params": dense["params"], "flops": dense["flops"], "latency_ms": run["dense_latency"] * 1e3,
                  "structure": run["dense_structure"]},
        "pruned": {"metrics": {SPLIT: run["pruned_metrics"]}, "metric": run["pruned_metrics"]["accuracy"],
                   "metrics_before_recovery": {SPLIT: before} if before else None,
                   "params": pruned["params"], "flops": pruned["flops"], "latency_ms": run["pruned_latency"] * 1e3,
                   "structure": run["pruned_structure"]},
        "params_ratio": pruned["params"] / dense["params"], "flops_ratio": pruned["flops"] / dense["flops"],
        "speedup": run["dense_latency"] / run["pruned_latency"],
        "latency": {"batch_size": int(run["latency_batch"]["pixel_values"].shape[0]),
                    "image": list(run["latency_batch"]["pixel_values"].shape[1:]), "device": "cpu",
                    "statistic": f"min over 2 alternating rounds of the median of {recipe.eval.latency_repeats} "
                                 "passes"},
        "removed": {"channels": plan.num_channels(), "groups": len(plan.channels)},
        "plan": plan.to_dict(),
        "channel_importance": run["scores"].to_dict() if hasattr(run["scores"], "to_dict") else run["scores"],
        "training": {"finetune": run["finetune"], "recover": run["recover"]},
        "eval_examples": {"used": run["dense_metrics"].get("num_examples"),
                          "of": run["dense_metrics"].get("num_examples")},
        "stage_seconds": dict(run["log"].seconds), "wall_seconds": run["log"].total_seconds,
        "reload_max_abs_diff": reload_diff, "machine": machine_info(), "recipe": asdict(recipe),
    }
    return clean(results)


def channel_widths_plot(results: dict, path: Path) -> Path:
    """channels.png: every channel group's width before (grey) and after (blue), in model order."""
    before, after = results["dense"]["structure"]["channels"], results["pruned"]["structure"]["channels"]
    names = list(before)
    return bar_chart(path, range(len(names)), [([before[n] for n in names], "#cccccc", "dense"),
                                              ([after.get(n, 0) for n in names], "#1f77b4", "pruned")],
                     "channel group (model order)", "channels",
                     f"channel widths: {results['removed']['channels']} channels removed", width=6.0)


def _table(r: dict) -> str:
    before = (r["pruned"].get("metrics_before_recovery") or {}).get(SPLIT)
    rows = ["| | dense | pruned" + (" (no recovery) | pruned (recovered)" if before else "") + " |",
            "|---|---|---" + ("|---" if before else "") + "|"]
    pad = " |" if before else ""
    rows.append(f"| {SPLIT} accuracy | {_num(r['dense']['metric'])} |"
                + (f" {_num(before['accuracy'])} |" if before else "") + f" {_num(r['pruned']['metric'])} |")
    rows.append(f"| parameters | {_big(r['dense']['params'])} |{pad} {_big(r['pruned']['params'])} "
                f"({r['params_ratio']:.1%}) |")
    rows.append(f"| FLOPs / image | {_big(r['dense']['flops'])} |{pad} {_big(r['pruned']['flops'])} "
                f"({r['flops_ratio']:.1%}) |")
    rows.append(f"| CPU latency, batch {r['latency']['batch_size']} (ms) | {r['dense']['latency_ms']:.1f} |{pad} "
                f"{r['pruned']['latency_ms']:.1f} ({r['speedup']:.2f}x) |")
    return "\n".join(rows)


def render_image_report(r: dict, plots: list[str]) -> str:
    prune = r["recipe"]["prune"]
    lines = [f"# hfprune: {Path(str(r['model'])).name}, image classification", "",
             f"{r['removed']['channels']} channels removed in {r['removed']['groups']} channel groups "
             f"(`{prune['channel_criterion']}`, scope {prune['scope']}, groups {prune['channel_groups']}, ratio "
             f"{prune['channels']}); reloaded logits max |diff| {r['reload_max_abs_diff']:.2e}.", "",
             _table(r), "", "## Channel groups", "", "| group | dense | pruned |", "|---|---|---|"]
    after = r["pruned"]["structure"]["channels"]
    lines += [f"| `{n}` | {s} | {after.get(n, s)} |" for n, s in r["dense"]["structure"]["channels"].items()]
    lines += ["", *[f"![{p}]({p})" for p in plots], "",
              f"Stages (s): {', '.join(f'{k} {v:.1f}' for k, v in r['stage_seconds'].items())}; hfprune "
              f"{r['hfprune_version']}, transformers {r['transformers_version']}, {r['date_utc']} UTC.", ""]
    return "\n".join(lines)


def render_image_card(r: dict) -> str:
    model = str(r["model"])
    front = {"library_name": "transformers", "pipeline_tag": "image-classification",
             "tags": ["hfprune", "pruning", "channel-pruning", "image-classification"], "metrics": ["accuracy"]}
    if not Path(model).exists():
        front["base_model"] = model
    where = r["recipe"]["output"].get("push_to_hub") or "REPO_OR_FOLDER"
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {Path(model).name} with {r['removed']['channels']} CNN channels removed by hfprune", "",
        (f"Channel pruning of `{model}`: `{r['recipe']['prune']['channel_criterion']}` importance, then "
         f"{(r['training']['recover'] or {}).get('steps', 0)} recovery steps with `transformers.Trainer`."), "",
        _table(r), "", "## How to load", "", "```python", "import hfprune",
        f'model = hfprune.load_pruned("{where}")', "",
        "from transformers import AutoModelForImageClassification",
        f'model = AutoModelForImageClassification.from_pretrained("{where}", trust_remote_code=True)  # no hfprune',
        "```", ""])
