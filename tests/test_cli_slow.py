"""`hfprune prune` end to end on the shared all-MiniLM-L6-v2 and the shared SST-2 files (tiny subset, few steps)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import hfprune
from hfprune.app.cli.main import main

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "all-MiniLM-L6-v2"
GLUE = SHARED / "data" / "glue"


@pytest.mark.slow
@pytest.mark.skipif(not (MODEL / "model.safetensors").exists(), reason="shared model not present")
def test_prune_minilm_sst2_subset(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([str(a) for a in [
        "prune", "--model", MODEL, "--task", "sst2", "--data-dir", GLUE, "--heads", 0.5, "--criterion", "michel",
        "--finetune-steps", 1, "--recover-steps", 1, "--batch-size", 8, "--max-train-samples", 32,
        "--max-eval-samples", 16, "--score-batches", 1, "--max-length", 32, "--output", out, "--quiet",
        "--set", "eval.latency_batch_size=2", "--set", "eval.latency_seq_len=16", "--set", "eval.latency_repeats=1",
    ]])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["classification_head"] == "new" and results["removed"]["heads"] == 36
    assert results["pruned"]["structure"]["heads"] != results["dense"]["structure"]["heads"]
    assert sum(results["pruned"]["structure"]["heads"]) == 36
    assert 0 <= results["pruned"]["metric"] <= 1 and results["reload_max_abs_diff"] < 1e-4
    model = hfprune.load_pruned(out)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(out)
    with torch.no_grad():
        logits = model(**tok(["a fine film ."], return_tensors="pt")).logits
    assert logits.shape == (1, 2) and torch.isfinite(logits).all()
    for name in ("README.md", "report.md", "head_importance.png", "structure.png", "model.safetensors"):
        assert (out / name).is_file(), name
