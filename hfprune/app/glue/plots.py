"""PNG plots of a GLUE run (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from ..common.render import pyplot as _pyplot


def head_importance_heatmap(scores, removed: dict[int, list[int]], path: str | Path, title: str = "") -> Path:
    """Heatmap of head importance (layers x heads); removed heads are crossed out, missing heads left blank.

    Args:
        scores (array-like `[num_layers, max_heads]`): importance (None/NaN where a layer has no such head).
        removed (`dict[int, list[int]]`): the plan's heads, crossed out.
        path (`str` or `Path`): the PNG to write.
    """
    plt = _pyplot()
    data = np.array([[np.nan if v is None else v for v in row] for row in scores], dtype=float)
    layers, heads = data.shape
    fig, ax = plt.subplots(figsize=(max(4.0, 0.45 * heads + 2), max(2.5, 0.4 * layers + 1.5)))
    image = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto")
    for layer, idx in removed.items():
        for h in idx:
            ax.text(h, int(layer), "x", ha="center", va="center", color="white", fontsize=10, fontweight="bold")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(heads))
    ax.set_yticks(range(layers))
    ax.set_title(textwrap.fill(title or "head importance (x = removed)", 60), fontsize=10)
    fig.colorbar(image, ax=ax, label="importance")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def structure_bars(per_layer: list[dict], path: str | Path, title: str = "") -> Path:
    """Bar chart per layer: heads and FFN neurons before (light) and kept (dark)."""
    plt = _pyplot()
    x = np.arange(len(per_layer))
    fig, axes = plt.subplots(1, 2, figsize=(max(6.0, 0.7 * len(per_layer) + 4), 3.2))
    for ax, key, label in ((axes[0], "heads", "attention heads"), (axes[1], "ffn", "FFN neurons")):
        ax.bar(x, [r[f"{key}_before"] for r in per_layer], color="#c6dbef", label="before")
        ax.bar(x, [r[f"{key}_after"] for r in per_layer], color="#2171b5", label="kept")
        ax.set_xticks(x)
        ax.set_xlabel("layer")
        ax.set_ylabel(label)
        ax.legend(fontsize=8, loc="lower left", framealpha=0.9)
    fig.suptitle(title or "kept structure per layer")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def sweep_plot(points: list[dict], metric: str, path: str | Path, title: str = "",
               unpruned: float | None = None) -> Path:
    """Metric against the fraction of heads removed (masked, no recovery); `unpruned`: the dense model's value,
    drawn at 0 (a distinct marker) when the sweep has no point there."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    xs = [p["fraction"] for p in points]
    ys = [np.nan if p.get(metric) is None else p[metric] for p in points]
    if unpruned is not None and 0.0 not in xs:
        ax.plot([0.0, *xs], [unpruned, *ys], color="#9ecae1", linestyle=":")
        ax.plot([0.0], [unpruned], marker="s", color="#08306b", linestyle="", label="unpruned")
        ax.legend(fontsize=8)
    ax.plot(xs, ys, marker="o", color="#2171b5")
    ax.set_xlabel("fraction of heads removed")
    ax.set_ylabel(metric)
    # Wrapped, so a long title is never cut at the figure's edge.
    ax.set_title(textwrap.fill(title or f"{metric} vs fraction of heads removed (masked)", 48), fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)


def write_plots(results: dict, folder: str | Path) -> list[str]:
    """Write every plot the results allow into `folder`; returns the file names written."""
    folder = Path(folder)
    written = []
    if results.get("head_importance"):
        head_importance_heatmap(results["head_importance"], results["plan"]["heads"], folder / "head_importance.png",
                                title=f"{results['task']}: head importance ({results['recipe']['prune']['criterion']}"
                                      ", x = removed)")
        written.append("head_importance.png")
    structure_bars(results["per_layer"], folder / "structure.png", title=f"{results['task']}: kept structure")
    written.append("structure.png")
    if results.get("sweep"):
        sweep_plot(results["sweep"], results["metric"], folder / "sweep.png",
                   title=f"{results['task']}: {results['metric']} vs heads removed (masked, no recovery)",
                   unpruned=(results.get("dense") or {}).get("metric"))
        written.append("sweep.png")
    return written
