"""Writing a run's outputs atomically (temporary folder next to OUT, moved into place at the end) and the Hub push."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import torch

from ...io import atomic_dir

logger = logging.getLogger("hfprune")

# A folder we may replace: empty, or written by an earlier run (it has results.json). Anything else is the user's.
_MARKER = "results.json"


# The one subfolder a run writes (`--export compressed-tensors`); results.json lists it among its files.
_SUBFOLDERS = ("compressed-tensors",)


def _written_by_hfprune(out_dir: Path) -> bool:
    """An earlier run's folder: hfprune's results.json, and no subfolder but the ones a run writes and lists."""
    try:
        results = json.loads((out_dir / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    if not (isinstance(results, dict) and (not results or "hfprune_version" in results)):
        return False
    listed = set(results.get("files") or [])
    # A project folder (src/, .git/ ...) that merely holds some results.json is never replaced.
    return all(p.name in _SUBFOLDERS and p.name in listed for p in out_dir.iterdir() if p.is_dir())


def check_output_dir(out_dir: str | Path) -> None:
    """Refuse an output folder that exists and was not written by hfprune (checked before any work starts)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"output {out_dir} is a file, not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not _written_by_hfprune(out_dir):
        raise FileExistsError(f"output folder {out_dir} exists and holds files not written by hfprune; "
                              "choose another --output")


def _reload_diff(folder: Path, model, batch: dict) -> float:
    from ...io import load_pruned

    small = {k: v[:8] for k, v in batch.items()}
    reloaded = load_pruned(folder)
    model.eval().to("cpu")
    with torch.no_grad():
        return float((reloaded(**small).logits - model(**small).logits).abs().max())


def write_outputs(model, tokenizer, run: dict, out_dir: str | Path) -> dict:
    """Write model, tokenizer, remote code, results.json, report.md, plots and README.md; move them to `out_dir`.

    Returns:
        `dict`: the results written to results.json.
    """
    from ...remote import add_remote_code
    from ...structure import get_record
    from .markdown import render_model_card, render_report
    from .plots import write_plots
    from .results import build_results

    out_dir = Path(out_dir)
    with atomic_dir(out_dir, overwrite=True) as tmp:  # check_output_dir (the --output guard) decided before any work
        model.save_pretrained(tmp)  # safetensors; the config carries the hfprune structure record
        tokenizer.save_pretrained(tmp)
        diff = _reload_diff(tmp, model, run["latency_batch"])
        # The generated modeling file lets plain transformers load the folder (trust_remote_code=True).
        add_remote_code(tmp)
        out = run["recipe"].output
        if out.export == "compressed-tensors":  # int8/int4 weights a serving engine reads (vLLM, transformers)
            from ...serving.compressed_tensors import export_compressed_tensors

            export_compressed_tensors(model, tmp / "compressed-tensors", bits=out.bits, group_size=out.group_size,
                                      tokenizer=tokenizer)
        results = build_results(run, get_record(model.config), diff)
        plots = write_plots(results, tmp) if run["recipe"].output.plots else []
        results["files"] = sorted([*os.listdir(tmp), "results.json", "report.md", "README.md"])
        (tmp / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        (tmp / "report.md").write_text(render_report(results, plots))
        (tmp / "README.md").write_text(render_model_card(results, has_remote_code=True))
    return results


def push_outputs(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub repo `repo_id` (token from `HF_TOKEN` / `hf auth login`); returns the commit URL.

    Raises:
        ConnectionError / PermissionError: offline, unreachable, or no token; the message says that the local
            outputs are complete.
    """
    from ...remote import push_folder_to_hub

    try:
        return push_folder_to_hub(folder, repo_id, private=private)
    except (ConnectionError, PermissionError) as err:
        raise type(err)(f"{err} (the outputs are complete in {folder}; push them later with "
                        f"hfprune.remote.push_folder_to_hub)") from None
