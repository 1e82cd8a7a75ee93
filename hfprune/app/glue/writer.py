"""Writing a GLUE run's outputs atomically: model, tokenizer, remote code, results.json, report.md, plots and the
model card (a temporary folder next to OUT, moved into place at the end)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ...io import atomic_dir
from ...remote import add_remote_code
from ...serving.compressed_tensors import export_compressed_tensors
from ...structure import get_record
from ..common.outputs import reload_diff
from .plots import write_plots
from .report import render_model_card, render_report
from .results import build_results


def write_outputs(model, tokenizer, run: dict, out_dir: str | Path) -> dict:
    """Write model, tokenizer, remote code, results.json, report.md, plots and README.md; move them to `out_dir`.

    Returns:
        `dict`: the results written to results.json.
    """
    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:  # check_output_dir (the --output guard) decided before any work
        model.save_pretrained(tmp)  # safetensors; the config carries the hfprune structure record
        tokenizer.save_pretrained(tmp)
        diff = reload_diff(tmp, model, run["latency_batch"])
        # The generated modeling file lets plain transformers load the folder (trust_remote_code=True).
        add_remote_code(tmp)
        out = run["recipe"].output
        if out.export == "compressed-tensors":  # int8/int4 weights a serving engine reads (vLLM, transformers)
            export_compressed_tensors(model, tmp / "compressed-tensors", bits=out.bits, group_size=out.group_size,
                                      tokenizer=tokenizer)
        results = build_results(run, get_record(model.config), diff)
        plots = write_plots(results, tmp) if out.plots else []
        results["files"] = sorted([*os.listdir(tmp), "results.json", "report.md", "README.md"])
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_report(results, plots))
        (tmp / "README.md").write_text(render_model_card(results, has_remote_code=True))
    return results
