"""The real SmolLM2-135M-Instruct, uniformly pruned (6 of 9 heads, FFN 1152) and exported as int8 compressed-tensors,
loads with plain `from_pretrained` in a process without hfprune and computes the dequantized model's logits."""

from __future__ import annotations

import copy

import pytest
import torch
from serving_util import load_plainly, save_reference

import hfprune

pytest.importorskip("compressed_tensors")
pytest.importorskip("gguf")


def _smollm2(folder):
    """The real SmolLM2 from the session fixture's folder (converted once from its GGUF), eager attention."""
    import transformers

    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                             attn_implementation="eager").eval()


@pytest.mark.slow
def test_smollm2_uniform_int8_export_loads_plainly(smollm2, tmp_path):
    from hfprune.serving.compressed_tensors import fake_quantize, quantization_targets

    model = _smollm2(smollm2[0])
    n = model.config.num_hidden_layers
    # First-k style: the last head of each of the 3 KV groups, and FFN neurons 1152..1535, in every layer.
    plan = hfprune.PruningPlan(heads={i: [2, 5, 8] for i in range(n)}, neurons={i: list(range(1152, 1536))
                                                                                  for i in range(n)})
    hfprune.prune(model, plan)
    assert hfprune.model_structure(model)["heads"] == [6] * n
    folder = tmp_path / "folders" / "smollm2-int8"
    folder.parent.mkdir()
    hfprune.export_compressed_tensors(model, folder, bits=8)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for module in quantization_targets(reference).values():
            module.weight.copy_(fake_quantize(module.weight, 8))
    ids = torch.randint(100, 10000, (2, 12), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    with torch.no_grad():
        expected = reference(**inputs).logits
        float_logits = model(**inputs).logits
    save_reference(folder, inputs, expected)
    result = load_plainly(folder.parent)["smollm2-int8"]
    assert result["class"] == "LlamaForCausalLM"
    assert result["diff"] <= 1e-3 * expected.abs().max().item()
    assert (expected - float_logits).abs().max() > 1e-4  # int8 rounding is there
    size = (folder / "model.safetensors").stat().st_size
    assert size < 0.5 * sum(p.numel() * 4 for p in model.parameters())
