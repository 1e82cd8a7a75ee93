"""Uniform Minitron pruning of the real SmolLM2-135M (GGUF, llama architecture) reloads with plain transformers."""

from __future__ import annotations

import pytest
import torch
import transformers

import hfprune

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2_model(smollm2):
    """The real SmolLM2, from the folder conftest's session fixture converted once from its GGUF."""
    folder, _, _ = smollm2
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def test_uniform_activation_pruning_of_smollm2_reloads_with_plain_from_pretrained(smollm2_model, tmp_path):
    model = smollm2_model
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 49152, (2, 32), generator=g)} for _ in range(2)]
    heads = hfprune.head_importance(model, batches, criterion="activation", show_progress=False)
    neurons = hfprune.neuron_importance(model, batches, criterion="activation", show_progress=False)
    plan = hfprune.select_heads(heads, ratio=0.25, uniform=True, model=model)  # whole KV groups: 9/3 -> 6/2
    plan.neurons = hfprune.select_neurons(neurons, ratio=0.25, uniform=True).neurons  # 1536 -> 1152
    plan.layers = hfprune.select_layers(hfprune.layer_importance(model, batches, method="block_influence",
                                                                 show_progress=False), count=2).layers
    hfprune.prune(model, plan)
    structure = hfprune.model_structure(model)
    assert structure["heads"] == [6] * 28 and structure["kv_heads"] == [2] * 28 and structure["ffn"] == [1152] * 28
    inputs = {"input_ids": torch.randint(0, 49152, (1, 24), generator=g)}
    with torch.no_grad():
        pruned = model(**inputs).logits
    # The GGUF loader leaves its quantizer attached although the weights are dense floats, and save_pretrained refuses
    # such a model; drop it the way transformers' own dequantize() ends (hfprune.save_pruned does this too, once the
    # GGUF support of the other half of issue 10 is merged).
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    hfprune.save_pruned(model, tmp_path / "out")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    assert type(plain).__name__ == "LlamaForCausalLM"
    assert (plain.config.num_attention_heads, plain.config.num_key_value_heads, plain.config.intermediate_size,
            plain.config.num_hidden_layers) == (6, 2, 1152, 28)
    with torch.no_grad():
        reloaded = plain(**inputs).logits
    assert (reloaded - pruned).abs().max() <= 1e-4
