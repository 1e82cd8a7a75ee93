"""The walkthrough notebook runs top to bottom, offline, on the real model in ../shared (its cells assert)."""

from __future__ import annotations

from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "walkthrough.ipynb"


@pytest.mark.slow
def test_walkthrough_runs(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    # The kernel and its subprocesses inherit these: outputs and the remote-code module cache stay in tmp_path.
    monkeypatch.setenv("HFPRUNE_NOTEBOOK_OUT", str(tmp_path / "out"))
    monkeypatch.setenv("HF_MODULES_CACHE", str(tmp_path / "modules"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # a small model on a shared CPU: threads only add contention
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    client = nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = "".join(o.get("text", "") for cell in notebook.cells if cell.cell_type == "code"
                      for o in cell.get("outputs", []))
    assert "modeling_hfprune.BertForSequenceClassification; max |logits diff|" in outputs
    folder = tmp_path / "out" / "minilm-sst2-heads50"
    assert (folder / "modeling_hfprune.py").is_file() and (folder / "model.safetensors").is_file()
    assert (tmp_path / "out" / "head_importance.png").stat().st_size > 0
