"""Where a run's outputs go: the output-folder check made before any work, the reload check, and the Hub push.

Every application writes its folder through `hfprune.io.atomic_dir` (a temporary folder next to OUT, moved into place
at the end), so a failed run leaves nothing behind.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from ...io import load_pruned
from ...remote import push_folder_to_hub

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


def reload_diff(folder: Path, model, batch: dict) -> float:
    """Max |logit difference| between `model` and the folder it was just saved to, reloaded with `load_pruned`, on
    the first 8 rows of `batch`."""
    small = {k: v[:8] for k, v in batch.items()}
    reloaded = load_pruned(folder)
    model.eval().to("cpu")
    with torch.no_grad():
        return float((reloaded(**small).logits - model(**small).logits).abs().max())


def push_outputs(folder: str | Path, repo_id: str, private: bool = False) -> str:
    """Upload `folder` to the Hub repo `repo_id` (token from `HF_TOKEN` / `hf auth login`); returns the commit URL.

    Raises:
        ConnectionError / PermissionError: offline, unreachable, or no token; the message says that the local
            outputs are complete.
    """
    try:
        return push_folder_to_hub(folder, repo_id, private=private)
    except (ConnectionError, PermissionError) as err:
        raise type(err)(f"{err} (the outputs are complete in {folder}; push them later with "
                        f"hfprune.remote.push_folder_to_hub)") from None
