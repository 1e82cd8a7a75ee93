"""The core contract on the real pretrained MiniLM in ../shared (slow, still runs in CI)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

import hfprune
from hfprune import PruningPlan

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
MODEL = SHARED / "models" / "minilm-l6-sst2"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MODEL.exists(), reason="../shared/models not present")]


def _sentences(n: int = 8) -> list[str]:
    with open(SHARED / "data" / "glue" / "SST-2" / "dev.tsv", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [r[0] for r in rows[1 : n + 1]]


def test_minilm_masked_pruned_reloaded(tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForSequenceClassification.from_pretrained(MODEL).eval()
    batch = tokenizer(_sentences(), padding=True, return_tensors="pt")
    g = torch.Generator().manual_seed(0)
    plan = PruningPlan(
        heads={i: torch.randperm(12, generator=g)[: 2 + 2 * i].tolist() for i in range(5)} | {5: list(range(12))},
        neurons={i: torch.randperm(1536, generator=g)[:768].tolist() for i in range(6)},
        layers=[4],
    )
    with torch.no_grad():
        with hfprune.masked(model, plan):
            masked = model(**batch).logits
        hfprune.prune(model, plan)
        pruned = model(**batch).logits
    assert (masked - pruned).abs().max() <= 1e-4
    hfprune.save_pruned(model, tmp_path / "out", tokenizer=tokenizer)
    reloaded = hfprune.load_pruned(tmp_path / "out")
    with torch.no_grad():
        again = reloaded(**batch).logits
    assert (again - pruned).abs().max() <= 1e-4
    assert hfprune.model_structure(reloaded)["heads"] == [10, 8, 6, 4, 0]
