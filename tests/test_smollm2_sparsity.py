"""The real decoder: SmolLM2-135M (GGUF, dequantized) is saved as a plain folder and pruned 50% by Wanda."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import hfprune
from tests.smollm import GLUE, glue_sentences

pytestmark = pytest.mark.slow


def test_gguf_model_saves_as_a_plain_checkpoint(smollm2):
    folder, ids, logits = smollm2
    config = json.loads((folder / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    reloaded = AutoModelForCausalLM.from_pretrained(folder)
    assert not getattr(reloaded, "is_quantized", False) and reloaded.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, logits, rtol=1e-4, atol=1e-4)


def test_wanda_50_percent_beats_magnitude_and_reloads(smollm2, tmp_path):
    if not (GLUE / "SST-2").is_dir():
        pytest.skip("../shared/data/glue is not there")
    from transformers import AutoTokenizer

    folder, _, _ = smollm2
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    calib = hfprune.calibration_batches(tokenizer, glue_sentences("SST-2/train.tsv", ("sentence",))[:1000],
                                        num_samples=8, seq_len=128, model=model)
    held_out = hfprune.calibration_batches(tokenizer, glue_sentences("MRPC/dev.tsv", ("#1 String", "#2 String")),
                                           num_samples=2, seq_len=128, seed=1)
    dense = hfprune.perplexity(model, held_out)
    handle = hfprune.sparsify(model, 0.5, criterion="wanda", dataloader=calib, keep_original=False)
    assert handle.mask_sparsity() == pytest.approx(0.5, abs=1e-3)
    assert handle.info["blocks"] == 30 and handle.info["tokens"] == 8 * 128
    wanda = hfprune.perplexity(model, held_out)
    handle.finalize()
    hfprune.save_pruned(model, tmp_path / "wanda50", tokenizer=tokenizer)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "wanda50")
    assert hfprune.perplexity(reloaded, held_out) == pytest.approx(wanda, rel=1e-4)

    magnitude = AutoModelForCausalLM.from_pretrained(folder)
    hfprune.sparsify(magnitude, 0.5).finalize()
    mag = hfprune.perplexity(magnitude, held_out)
    assert dense < wanda < mag, (dense, wanda, mag)
