"""What every application's report is made of: number formatting, JSON-safe results, the machine and version
header of results.json, and matplotlib without a display."""

from __future__ import annotations

import datetime as _dt
import math
import os
import platform
import textwrap

import torch

from ... import __version__


def num(value, digits: int = 4) -> str:
    """`0.91234` -> `"0.9123"`; None -> `"n/a"`."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def big(n: int | None) -> str:
    """`1234567` -> `"1.23M"`; None -> `"n/a"`."""
    if n is None:
        return "n/a"
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def clean(value):
    """JSON-safe copy: tensors to lists, NaN/inf to None."""
    if isinstance(value, torch.Tensor):
        return clean(value.tolist())
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [clean(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def machine_info() -> dict:
    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__}


def results_header() -> dict:
    """The first keys of every results.json: versions and the date (UTC)."""
    import transformers

    return {"hfprune_version": __version__, "transformers_version": transformers.__version__,
            "date_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")}


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (headless: servers and CI have no display)."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def bar_chart(path, labels, series: list[tuple[list, object, str | None]], xlabel: str = "", ylabel: str = "",
              title: str = "", width: float = 5.0):
    """One bar chart written to `path`: each series `(values, color or colors, legend label or None)` drawn over the
    previous one (so `before` then `kept` shows what was removed)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(max(width, 0.3 * len(labels) + 3), 3.4))
    for values, color, label in series:
        ax.bar(labels, values, color=color, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(textwrap.fill(title, 60), fontsize=10)  # wrapped: never cut at the figure's edge
    if any(label for _, _, label in series):
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def training_steps(results: dict) -> tuple[str, str]:
    """How much training each compared model had: ("80 fine-tune steps", "80 + 40 recovery steps")."""
    training = results.get("training") or {}
    finetune = (training.get("finetune") or {}).get("steps", 0)
    recover = (training.get("recover") or {}).get("steps", 0)
    dense = f"{finetune} fine-tune steps" if finetune else "no fine-tuning"
    if not recover:
        return dense, dense
    return dense, (f"{finetune} + {recover} recovery steps" if finetune else f"{recover} recovery steps")


def examples_phrase(results: dict) -> str:
    """" on 200 of 872 examples" (or " on 872 examples"); empty when the count is not known."""
    count = results.get("eval_examples") or {}
    used, total = count.get("used"), count.get("of")
    if not used:
        return ""
    return f" on {used} of {total} examples" if total and total != used else f" on {used} examples"


def print_summary(results: dict, out_dir) -> None:
    """The final lines of a GLUE or image run (always printed, also with --quiet)."""
    split, metric = results["eval_split"], results["metric"]
    dense_steps, pruned_steps = training_steps(results)
    print(f"{results['task']} {split} {metric}: dense {num(results['dense']['metric'])} ({dense_steps}) -> pruned "
          f"{num(results['pruned']['metric'])} ({pruned_steps}){examples_phrase(results)}; "
          f"params {results['params_ratio']:.1%}, "
          f"FLOPs {results['flops_ratio']:.1%}, "
          f"CPU speedup {results['speedup']:.2f}x; wall {results['wall_seconds']:.0f} s")
    print(f"outputs in {out_dir}: {', '.join(results['files'])}")
