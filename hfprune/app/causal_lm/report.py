"""The report of a causal-LM run: results.json's content, report.md, the PNG plots and the final summary lines."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import yaml

from ..common.render import bar_chart, clean, machine_info, results_header


def build_results(run: dict) -> dict:
    """results.json from the runner's state (see `run.run_causal_lm`)."""
    plan = run["plan"]
    return clean({
        **results_header(), "task": "causal-lm", "model": run["recipe"].model.name_or_path,
        "recipe": asdict(run["recipe"]), "perplexity": run["perplexity"], "stage_seconds": dict(run["log"].seconds),
        "wall_seconds": run["log"].total_seconds, "before": run["before"], "after": run["after"],
        "plan": plan.to_dict() if plan is not None else None, "scores": dict(run["scores"]),
        "recover_losses": run["losses"], "recovery": run["recovery"], "lm_eval": run["lm_eval"],
        "eval_windows": run["eval_windows"], "machine": machine_info(),
    })


def render_report(results: dict, plots: list[str]) -> str:
    """The text of report.md."""
    ppl, what = results["perplexity"], _pruned_what(results)
    lines = [f"# hfprune causal-LM run: {results['model']}", "", f"Pruned: {what}.", "",
             "| model | perplexity |", "|---|---|"]
    lines += [f"| {name} | {value:.3f} |" for name, value in ppl.items() if value is not None]
    b, a = results["before"], results["after"]
    sizes = ", ".join(f"{name} {sorted(set(a['structure'][key]))}" for key, name in (
        ("heads", "heads per layer"), ("kv_heads", "KV heads"), ("ffn", "FFN"), ("experts", "experts per layer"))
        if key in a["structure"])
    lines += ["", f"Parameters: {b['params']:,} -> {a['params']:,}; layers {b['structure']['num_layers']} -> "
              f"{a['structure']['num_layers']}; {sizes}.", "", *expert_table(results), "| stage | seconds |",
              "|---|---|"]
    lines += [f"| {k} | {v:.1f} |" for k, v in results["stage_seconds"].items()]
    lines += _recovery_lines(results["recovery"]) + _lm_eval_lines(results["lm_eval"])
    lines += ["", f"Loads as {results['loads_as']}: `{results['load_with']}` ({results['loads_because']}).", ""]
    lines += [*(f"![{p}]({p})" for p in plots), ""]
    return "\n".join(lines)


def _pruned_what(results: dict) -> str:
    prune = results["recipe"]["prune"]
    if results["plan"] is None:
        return (f"weight sparsity {results['after']['weight_sparsity']:.1%} ({prune['criterion']}, "
                f"{prune['pattern'] or 'unstructured'})")
    return (f"layers {results['plan']['layers']}, hidden {prune['hidden']}, heads {prune['heads']}, "
            f"ffn {prune['ffn']}, experts {prune.get('experts')} ({prune['criterion']}, "
            f"layer method {prune['layer_method']}, uniform={prune['uniform']})")


def render_lm_card(results: dict) -> str:
    """README.md in the Hub's model-card format: YAML front matter, how the model was made, how it loads."""
    model = str(results["model"])
    front = {"library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["hfprune", "pruning", "causal-lm"]}
    if not Path(model).exists():
        front["base_model"] = model
    ppl = " -> ".join(f"{k} {v:.3f}" for k, v in results["perplexity"].items() if v is not None)
    remote = ", trust_remote_code=True" if results["trust_remote_code"] else ""
    return "\n".join([
        "---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "",
        f"# {Path(model).name} pruned with hfprune", "",
        f"Pruned: {_pruned_what(results)}. Parameters {results['before']['params']:,} -> "
        f"{results['after']['params']:,}.", "",
        f"Perplexity on {results['eval_windows']} held-out windows of {results['recipe']['data']['seq_len']} tokens: "
        f"{ppl}.", "",
        "## How to load", "",
        f"It loads as `{results['loads_as']}` ({results['loads_because']}):", "",
        "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", 'repo = "REPO_OR_FOLDER"',
        f"model = AutoModelForCausalLM.from_pretrained(repo{remote})",
        "tokenizer = AutoTokenizer.from_pretrained(repo)",
        "```", "", "Or with hfprune: `hfprune.load_pruned(repo)`. The full run: results.json and report.md.", "",
    ])


def expert_table(results: dict) -> list[str]:
    """The per-layer table of an expert plan (experts before / after and the removed indices); `[]` otherwise."""
    plan = results["plan"] or {}
    removed = plan.get("experts") or {}
    if not removed:
        return []
    before, after = results["before"]["structure"]["experts"], results["after"]["structure"]["experts"]
    lines = ["| layer | experts before | experts after | removed |", "|---|---|---|---|"]
    lines += [f"| {i} | {n} | {after[i]} | {', '.join(map(str, removed.get(str(i), []))) or '-'} |"
              for i, n in enumerate(before) if n and i < len(after)]
    return [*lines, ""]


def _recovery_lines(rec: dict | None) -> list[str]:
    if rec is None:
        return []
    how = "distillation from " + rec["teacher"] + f" ({rec['distill']})" if rec["loss"] == "distill" else "LM loss"
    how += f", LoRA rank {rec['lora']} merged into the weights" if rec["lora"] else ", all weights"
    return ["", f"Recovery: {how}; token budget {rec['steps']} steps x {rec['batch_size']} windows x "
            f"{rec['seq_len']} tokens = {rec['tokens']:,} tokens ({rec['distinct_windows']} distinct windows of "
            f"{rec['available_windows']} available). The recovery windows come from the whole text file (the "
            f"held-out part excepted) and share no token with the {rec['calibration_windows']} calibration windows."]


def _lm_eval_lines(scores: dict | None) -> list[str]:
    if not scores:
        return []
    lines = ["", "| lm-eval task | metric | dense | final |", "|---|---|---|---|"]
    for task, metrics in scores["dense"].items():
        final = scores.get("final", {}).get(task, {})
        lines += [f"| {task} | {name} | {value:.4f} | {final.get(name, float('nan')):.4f} |"
                  for name, value in metrics.items()]
    return lines


def write_plots(results: dict, scores: dict, folder: Path) -> list[str]:
    """perplexity.png (every measured stage) and, for a layer plan, layer_scores.png (removed layers in red)."""
    try:
        import matplotlib  # noqa: F401  (plots are optional output)
    except ImportError:
        return []
    names = [k for k, v in results["perplexity"].items() if v is not None]
    bar_chart(folder / "perplexity.png", names, [([results["perplexity"][k] for k in names], "#2171b5", None)],
              ylabel="perplexity", title="perplexity before / after pruning")
    written = ["perplexity.png"]
    if "layers" in scores:
        removed, values = set(results["plan"]["layers"]), scores["layers"].tolist()
        colors = ["#cb181d" if i in removed else "#2171b5" for i in range(len(values))]
        bar_chart(folder / "layer_scores.png", range(len(values)), [(values, colors, None)], "layer (red: removed)",
                  results["recipe"]["prune"]["layer_method"], width=6.0)
        written.append("layer_scores.png")
    return written


def print_summary(results: dict, out_dir) -> None:
    """The final lines of a causal-LM run (always printed, also with --quiet)."""
    shown = " -> ".join(f"{k} {v:.3f}" for k, v in results["perplexity"].items() if v is not None)
    print(f"causal-lm perplexity on {results['eval_windows']} held-out windows: {shown}; params "
          f"{results['before']['params']:,} -> {results['after']['params']:,}; wall {results['wall_seconds']:.0f} s")
    print(f"outputs in {out_dir}: {', '.join(results['files'])}")
    print(f"loads with {results['load_with'].replace('folder', repr(str(out_dir)))}")
