"""A GGUF-loaded model (weights already dense floats) saves as a plain checkpoint; the quantizer is detached."""

from __future__ import annotations

import json

import pytest
import torch

import hfprune
from hfprune.dequantized import detach_gguf_quantizer
from tests.conftest import make_model


def _as_if_loaded_from_gguf(model):
    """What from_pretrained(gguf_file=...) leaves on a model whose weights it dequantized."""
    from transformers.quantizers.quantizer_gguf import GgufHfQuantizer
    from transformers.utils.quantization_config import GgufConfig

    quantizer = GgufHfQuantizer(GgufConfig(gguf_file="model.gguf"))
    model.hf_quantizer = quantizer
    model.is_quantized = True
    model.quantization_method = quantizer.quantization_config.quant_method
    model.config.quantization_config = quantizer.quantization_config
    return model


def test_save_pruned_detaches_the_gguf_quantizer(tmp_path):
    model = _as_if_loaded_from_gguf(make_model("llama"))
    with pytest.raises(ValueError, match="not serializable"):
        model.save_pretrained(tmp_path / "plain")  # the problem: transformers refuses
    hfprune.save_pruned(model, tmp_path / "saved")
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert "quantization_config" not in config
    assert getattr(model, "hf_quantizer", None) is None
    assert model.is_quantized is False
    import transformers

    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "saved")
    ids = torch.tensor([[1, 2, 3, 4]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, model(input_ids=ids).logits)


def test_packed_gguf_weights_and_plain_models_are_left_alone():
    assert detach_gguf_quantizer(make_model("llama")) is False  # nothing attached
    model = _as_if_loaded_from_gguf(make_model("llama"))
    model.hf_quantizer.quantized = {"model.layers.0.mlp.down_proj": "Q4_1"}  # weights kept in GGUF blocks
    assert detach_gguf_quantizer(model) is False and model.is_quantized
