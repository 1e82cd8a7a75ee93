"""Writing an image-classification run's outputs atomically: model, remote code, results.json, report.md, plot and
model card (a temporary folder next to OUT, moved into place at the end)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...io import atomic_dir
from ...remote import add_remote_code
from ..common.outputs import reload_diff
from .report import build_image_results, channel_widths_plot, render_image_card, render_image_report


def write_image_outputs(model, run: dict, out_dir: str | Path) -> dict:
    """Write model, remote code, results.json, report.md, plot and README.md; move them to `out_dir`."""
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:  # check_output_dir (the --output guard) decided before any work
        model.save_pretrained(tmp)
        diff = reload_diff(tmp, model, run["latency_batch"])
        add_remote_code(tmp)
        results = build_image_results(run, diff)
        plots = [channel_widths_plot(results, tmp / "channels.png").name] if run["recipe"].output.plots else []
        results["files"] = sorted([*os.listdir(tmp), "results.json", "report.md", "README.md"])
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_image_report(results, plots))
        (tmp / "README.md").write_text(render_image_card(results))
    return results
