"""The outputs of an image-classification (CNN channel) run: model, results.json, report.md, plots, model card.

Written like the GLUE path's (`outputs.write_outputs`): a temporary folder next to OUT, moved into place at the end.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch
import yaml

from ...io import atomic_dir
from .markdown import _big, _num
from .results import _clean, machine_info

SPLIT = "validation"


def build_image_results(run: dict, reload_diff: float) -> dict:
    import transformers

    from ... import __version__

    recipe, plan = run["recipe"], run["plan"]
    dense, pruned = run["dense_costs"], run["pruned_costs"]
    before = run["before_recovery"]
    results = {
        "hfprune_version": __version__, "transformers_version": transformers.__version__,
        "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S"),
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
        "stage_seconds": dict(run["log"].seconds), "wall_seconds": run["log"].total_seconds,
        "reload_max_abs_diff": reload_diff, "machine": machine_info(), "recipe": asdict(recipe),
    }
    return _clean(results)


def channel_widths_plot(results: dict, path: Path) -> Path:
    from .plots import _pyplot

    plt = _pyplot()
    before, after = results["dense"]["structure"]["channels"], results["pruned"]["structure"]["channels"]
    names = list(before)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.3 * len(names)), 3.5))
    ax.bar(range(len(names)), [before[n] for n in names], color="#cccccc", label="dense")
    ax.bar(range(len(names)), [after.get(n, 0) for n in names], color="#1f77b4", label="pruned")
    ax.set_xlabel("channel group (model order)")
    ax.set_ylabel("channels")
    ax.set_title(f"channel widths: {results['removed']['channels']} channels removed")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


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


def write_image_outputs(model, run: dict, out_dir: str | Path) -> dict:
    """Write model, remote code, results.json, report.md, plot and README.md; move them to `out_dir`."""
    from ...io import load_pruned
    from ...remote import add_remote_code

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:  # check_output_dir (the --output guard) decided before any work
        model.save_pretrained(tmp)
        batch = run["latency_batch"]["pixel_values"][:8]
        model.eval().to("cpu")
        with torch.no_grad():
            diff = float((load_pruned(tmp)(pixel_values=batch).logits - model(pixel_values=batch).logits).abs().max())
        add_remote_code(tmp)
        results = build_image_results(run, diff)
        plots = [channel_widths_plot(results, tmp / "channels.png").name] if run["recipe"].output.plots else []
        results["files"] = sorted([*os.listdir(tmp), "results.json", "report.md", "README.md"])
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_image_report(results, plots))
        (tmp / "README.md").write_text(render_image_card(results))
    return results
