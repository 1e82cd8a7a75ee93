"""Writing a causal-LM run's outputs atomically: model + tokenizer (a plain checkpoint where the structure allows),
results.json, report.md and plots."""

from __future__ import annotations

import json
from pathlib import Path

from ...io import atomic_dir
from ...io.formats import write_model
from .report import render_report, write_plots


def write_outputs(model, tokenizer, results: dict, scores: dict, out_dir: str | Path, plots: bool = True) -> dict:
    """Write everything into `out_dir` (replaced at the end); adds `loads_as` and `files` to `results`."""
    with atomic_dir(Path(out_dir), overwrite=True) as tmp:  # check_output_dir (the --output guard) decided first
        # As save_pruned: a GGUF-loaded model saves as a plain checkpoint, a uniform Llama whose head count
        # LlamaConfig refuses is written under the Mistral classes, so the folder loads with plain from_pretrained.
        results["loads_as"] = write_model(model, tmp, tokenizer, label=str(out_dir)).class_name
        written = write_plots(results, scores, tmp) if plots else []
        results["files"] = sorted({*(p.name for p in tmp.iterdir()), "results.json", "report.md"})
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_report(results, written))
    return results
