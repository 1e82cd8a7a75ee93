"""Writing a causal-LM run's outputs atomically: model + tokenizer (a plain checkpoint where the structure allows,
otherwise with the remote-code modeling file), results.json, report.md, plots and the model card."""

from __future__ import annotations

import json
from pathlib import Path

from ...io import atomic_dir
from ...io.formats import write_model
from ...remote import add_remote_code
from .report import render_lm_card, render_report, write_plots


def loading(loads) -> dict:
    """How the folder loads, as results.json says it: the class, whether remote code is needed, the call, why."""
    remote = not loads.plain
    call = "AutoModelForCausalLM.from_pretrained(folder" + (", trust_remote_code=True)" if remote else ")")
    return {"loads_as": loads.class_name, "trust_remote_code": remote, "load_with": call, "loads_because": loads.reason}


def write_outputs(model, tokenizer, results: dict, scores: dict, out_dir: str | Path, plots: bool = True) -> dict:
    """Write everything into `out_dir` (replaced at the end); adds how it loads (`loading`) and `files`."""
    with atomic_dir(Path(out_dir), overwrite=True) as tmp:  # check_output_dir (the --output guard) decided first
        # As save_pruned: a GGUF-loaded model saves as a plain checkpoint, a uniform Llama whose head count
        # LlamaConfig refuses is written under the Mistral classes, so the folder loads with plain from_pretrained.
        loads = write_model(model, tmp, tokenizer, label=str(out_dir))
        if not loads.plain:  # per-layer head / FFN counts: the generated modeling file builds them (no hfprune needed)
            add_remote_code(tmp)
        results.update(loading(loads))
        written = write_plots(results, scores, tmp) if plots else []
        results["files"] = sorted({*(p.name for p in tmp.iterdir()), "results.json", "report.md", "README.md"})
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_report(results, written))
        (tmp / "README.md").write_text(render_lm_card(results))
    return results
