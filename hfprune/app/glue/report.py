"""The report of a GLUE run: report.md (human-readable), README.md (the model card, in the Hub's format) and the
final summary lines on stdout."""

from __future__ import annotations

from pathlib import Path

import yaml

from ..common.render import big as _big
from ..common.render import examples_phrase, training_steps
from ..common.render import num as _num


def metrics_table(results: dict) -> str:
    """Dense vs pruned: every metric of the main eval split, params, FLOPs, latency."""
    split = results["eval_split"]
    dense, pruned = results["dense"], results["pruned"]
    before = (pruned.get("metrics_before_recovery") or {}).get(split)
    dense_steps, pruned_steps = training_steps(results)
    head = (f"| | dense ({dense_steps}) | pruned" + (f" (no recovery) | pruned ({pruned_steps})" if before else
                                                      f" ({pruned_steps})") + " |")
    lines = [head, "|---|---|---" + ("|---" if before else "") + "|"]
    for m in results["metrics"]:
        row = f"| {split} {m} | {_num(dense['metrics'][split][m])} |"
        if before:
            row += f" {_num(before[m])} |"
        lines.append(row + f" {_num(pruned['metrics'][split][m])} |")
    pad = " |" if before else ""
    lines.append(f"| parameters | {_big(dense['params'])} |{pad} {_big(pruned['params'])} "
                 f"({results['params_ratio']:.1%}) |")
    lines.append(f"| FLOPs / sequence of {results['flops_seq_len']} | {_big(dense['flops'])} |{pad} "
                 f"{_big(pruned['flops'])} ({results['flops_ratio']:.1%}) |")
    lat = results["latency"]
    lines.append(f"| CPU latency, batch {lat['batch_size']} x {lat['seq_len']} | {dense['latency_ms']:.1f} ms |{pad} "
                 f"{pruned['latency_ms']:.1f} ms ({results['speedup']:.2f}x) |")
    where = examples_phrase(results)
    if where:
        lines += ["", f"Metrics of `{split}`{where}."]
    return "\n".join(lines)


def render_report(results: dict, plots: list[str]) -> str:
    """The text of report.md."""
    r = results
    rec = r["recipe"]
    lines = [
        f"# hfprune report: {r['task']} / {Path(str(r['model'])).name}",
        "",
        rec.get("description") or "",
        (f"Model `{r['model']}`, task `{r['task']}` (metric: {r['metric']} on `{r['eval_split']}`), "
        f"criterion `{rec['prune']['criterion']}`, removed {r['removed']['heads']} heads, "
        f"{r['removed']['neurons']} FFN neurons, layers {r['removed']['layers']}. Run on {r['date_utc']} UTC "
        f"(hfprune {r['hfprune_version']}, transformers {r['transformers_version']}, "
        f"{r['machine']['cpu_count']} CPUs, {r['machine']['torch_threads']} torch threads)."),
        "",
        "## Results",
        "",
        metrics_table(r),
        "",
        "## Per layer",
        "",
        "| layer | heads | FFN | params | FLOPs |",
        "|---|---|---|---|---|",
    ]
    for row in r["per_layer"]:
        gone = " (removed)" if row["removed"] else ""
        lines.append(f"| {row['layer']}{gone} | {row['heads_before']} -> {row['heads_after']} | "
                     f"{row['ffn_before']} -> {row['ffn_after']} | {_big(row['params_before'])} -> "
                     f"{_big(row['params_after'])} | {_big(row['flops_before'])} -> {_big(row['flops_after'])} |")
    if r.get("sweep"):
        lines += ["", "## Sweep (heads masked, no recovery)", "", f"| fraction removed | {r['metric']} |",
                  "|---|---|"]
        lines += [f"| {p['fraction']:.2f} | {_num(p.get(r['metric']))} |" for p in r["sweep"]]
    lines += ["", "## Stages", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {name} | {sec:.1f} |" for name, sec in r["stage_seconds"].items()]
    lines += ["", f"Reloaded with `hfprune.load_pruned`: max |logit difference| = {r['reload_max_abs_diff']:.2e}.", ""]
    lines += [f"![{p}]({p})" for p in plots]
    return "\n".join(lines).replace("\n\n\n", "\n\n") + "\n"


def render_model_card(results: dict, has_remote_code: bool) -> str:
    """README.md in the Hub's model-card format: YAML front matter, then how the model was made and how to load it."""
    r = results
    model = str(r["model"])
    local = Path(model).exists()
    front = {
        "library_name": "transformers",
        "pipeline_tag": "text-classification",
        "tags": ["hfprune", "pruning", "structured-pruning", "text-classification", "glue", r["task"]],
        "metrics": list(r["metrics"]),
    }
    if not local:
        front["base_model"] = model
    data = r["recipe"]["data"]
    if not (data.get("train_file") or data.get("validation_file")):  # the Hub copy or the original GLUE files
        front["datasets"] = ["nyu-mll/glue"]
    front_text = yaml.safe_dump(front, sort_keys=False).strip()
    remote = ("AutoModelForSequenceClassification.from_pretrained(repo, trust_remote_code=True)  # no hfprune needed"
              if has_remote_code else "# (this folder carries no remote code: load it with hfprune)")
    where = r["recipe"]["output"].get("push_to_hub") or "REPO_OR_FOLDER"
    lines = [
        "---", front_text, "---", "",
        f"# {Path(model).name} pruned for {r['task']} with hfprune", "",
        (f"Structured pruning of `{model}` on GLUE {r['task']}: {r['removed']['heads']} attention heads, "
        f"{r['removed']['neurons']} FFN neurons and {len(r['removed']['layers'])} layers removed by "
        f"`{r['recipe']['prune']['criterion']}` importance, then "
        f"{(r['training']['recover'] or {}).get('steps', 0)} recovery steps with `transformers.Trainer`."), "",
        metrics_table(r), "",
        "## How to load", "",
        "```python",
        "import hfprune",
        f'model = hfprune.load_pruned("{where}")',
        "",
        "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
        f'repo = "{where}"',
        f"model = {remote}",
        "tokenizer = AutoTokenizer.from_pretrained(repo)",
        "```", "",
        (f"Per-layer structure, parameters and FLOPs: `hfprune info {where}`; the full run: results.json and "
         "report.md in this repository."), "",
    ]
    return "\n".join(lines)

