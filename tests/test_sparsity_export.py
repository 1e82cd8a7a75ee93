"""Folding, compressed export/load, int8 dynamic quantization and the 2:4 GPU helper (hfprune.sparsity)."""

from __future__ import annotations

import sys

import pytest
import torch

import hfprune
from hfprune.sparsity import compressed_stats, quantize_dynamic_int8, save_compressed, sparsify
from hfprune.sparsity.compressed import MANIFEST_NAME, _safetensors_sizes
from tests.conftest import logits_of, make_inputs, make_model


def test_finalized_model_saves_and_loads_with_from_pretrained(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = make_model("bert")
    handle = sparsify(model, 0.6, targets=["default", "classifier"])
    handle.finalize()
    model.save_pretrained(tmp_path / "dense")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "dense", attn_implementation="eager").eval()
    inputs = make_inputs(model)
    assert torch.equal(logits_of(loaded, inputs), logits_of(model, inputs))
    weight = loaded.get_submodule(handle.targets[0].name).weight
    assert abs(float((weight == 0).float().mean()) - 0.6) < 0.01


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_compressed_roundtrip_exact_and_int8_close(tmp_path, family):
    model = make_model(family)
    sparsify(model, 0.9).finalize()
    inputs = make_inputs(model)
    expected = logits_of(model, inputs)  # eager attention, as the reloads below, so logits can match bit for bit
    save_compressed(model, tmp_path / "f32")
    assert torch.equal(logits_of(hfprune.load_pruned(tmp_path / "f32", attn_implementation="eager"), inputs), expected)
    save_compressed(model, tmp_path / "i8", int8=True)
    quantized = hfprune.load_pruned(tmp_path / "i8", attn_implementation="eager")
    for name, param in model.named_parameters():
        loaded = quantized.get_parameter(name)
        assert torch.equal(loaded == 0, param == 0) or name.endswith("bias"), name  # same zeros
    assert torch.allclose(logits_of(quantized, inputs), expected, atol=0.05)
    assert not torch.equal(logits_of(quantized, inputs), expected)


def test_compressed_sizes_shrink_with_sparsity(tmp_path):
    """The bert-base check of benchmarks/sparsity_size.py, on a small BERT: same ratios."""
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    model = BertModel(BertConfig(vocab_size=500, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                                 intermediate_size=512)).eval()
    handle = sparsify(model, 0.9)
    keys = set(handle.keys())
    handle.finalize()
    model.save_pretrained(tmp_path / "dense")
    dense_sizes = _safetensors_sizes(tmp_path / "dense" / "model.safetensors")
    for int8, bound in ((False, 0.2), (True, 0.1)):
        folder = save_compressed(model, tmp_path / f"c{int8}", int8=int8)
        stats = compressed_stats(folder)
        assert stats["sparse_tensors"] == len(keys)
        assert stats["sparse_ratio"] <= bound
        sizes = _safetensors_sizes(folder / "model.sparse.safetensors")
        pruned_stored = sum(n for k, n in sizes.items() if k.split("::")[0] in keys)
        assert pruned_stored == stats["sparse_stored_bytes"]
        assert pruned_stored <= bound * sum(dense_sizes[k] for k in keys)
        for key, nbytes in sizes.items():
            if "::" not in key:  # not pruned: stored as-is, no more than in the dense file
                assert nbytes <= dense_sizes[key], key
    lower = save_compressed(model, tmp_path / "half", min_sparsity=0.95)  # nothing is that sparse: all dense
    assert compressed_stats(lower)["sparse_tensors"] == 0


def test_compressed_after_structural_pruning_and_without_importing_sparsity(tmp_path, monkeypatch):
    model = make_model("bert")
    model = hfprune.prune(model, hfprune.PruningPlan(heads={0: [1]}, neurons={1: [0, 5, 7, 9]}))
    sparsify(model, 0.5, pattern="4x4").finalize()
    inputs = make_inputs(model)
    save_compressed(model, tmp_path / "c")
    assert (tmp_path / "c" / MANIFEST_NAME).is_file()
    # A fresh session that never imported hfprune.sparsity: the format is recognised from the folder alone, and its
    # decoder imported on use (nothing is registered by importing a package; there is no FOLDER_LOADERS registry).
    for name in [m for m in sys.modules if m == "hfprune.sparsity" or m.startswith("hfprune.sparsity.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.delattr(hfprune, "sparsity", raising=False)
    assert hfprune.io.detect_format(tmp_path / "c").name == "hfprune-sparse"
    assert "hfprune.sparsity.compressed" not in sys.modules
    loaded = hfprune.load_pruned(tmp_path / "c", attn_implementation="eager")
    assert torch.equal(logits_of(loaded, inputs), logits_of(model, inputs))
    assert "hfprune.sparsity.compressed" in sys.modules
    assert not hasattr(hfprune.io, "FOLDER_LOADERS")


@pytest.mark.parametrize("family", ["bert", "gpt2", "qwen2"])  # qwen2: tied embeddings
def test_compressed_with_emptied_sub_blocks(tmp_path, family):
    """A layer that lost every head / every FFN neuron keeps 0-element weights; they must not break the export."""
    model = make_model(family)
    hfprune.prune(model, hfprune.PruningPlan(heads={0: [0, 1, 2, 3]}, neurons={1: list(range(48))}))
    assert any(t.numel() == 0 for t in model.state_dict().values())
    handle = sparsify(model, 0.7)
    handle.finalize()
    inputs = make_inputs(model)
    expected = logits_of(model, inputs)
    for int8 in (False, True):
        save_compressed(model, tmp_path / "c", int8=int8)
        assert compressed_stats(tmp_path / "c")["sparse_tensors"] >= len(handle.keys())
        loaded = logits_of(hfprune.load_pruned(tmp_path / "c", attn_implementation="eager"), inputs)
        assert torch.allclose(loaded, expected, atol=0.05 if int8 else 1e-6)
    save_compressed(model, tmp_path / "listed", tensors=list(model.state_dict()))  # every key, empty ones too
    loaded = logits_of(hfprune.load_pruned(tmp_path / "listed", attn_implementation="eager"), inputs)
    assert torch.allclose(loaded, expected, atol=1e-6)


def test_compressed_bf16_model_reloads_in_bf16(tmp_path):
    model = make_model("bert").to(torch.bfloat16)
    sparsify(model, 0.8).finalize()
    inputs = make_inputs(model)
    save_compressed(model, tmp_path / "c")
    loaded = hfprune.load_pruned(tmp_path / "c", attn_implementation="eager")
    assert loaded.dtype == torch.bfloat16  # as from_pretrained of a bf16 save_pretrained folder
    assert torch.equal(logits_of(loaded, inputs), logits_of(model, inputs))
    assert hfprune.load_pruned(tmp_path / "c", dtype=torch.float32).dtype == torch.float32


def test_save_compressed_bad_input_writes_nothing(tmp_path):
    model = make_model("bert")
    with pytest.raises(ValueError, match="'nope.weight'.* not in the model's state dict"):
        save_compressed(model, tmp_path / "x", tensors=["nope.weight"])
    assert not any(tmp_path.iterdir())


def test_int8_dynamic_quantization_keeps_zeros_and_accuracy():
    model = make_model("bert")
    sparsify(model, 0.5).finalize()
    inputs = make_inputs(model)
    qmodel = quantize_dynamic_int8(model)
    assert isinstance(model.bert.encoder.layer[0].intermediate.dense, torch.nn.Linear)  # a copy was quantized
    qlinear = qmodel.bert.encoder.layer[0].intermediate.dense
    assert type(qlinear).__module__.startswith("torch.ao.nn.quantized.dynamic")
    dequantized = qlinear.weight().dequantize()
    assert torch.all(dequantized[model.bert.encoder.layer[0].intermediate.dense.weight == 0] == 0)
    assert torch.allclose(logits_of(qmodel, inputs), logits_of(model, inputs), atol=0.05)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU message")
def test_two_four_gpu_conversion_explains_missing_cuda():
    model = make_model("bert")
    sparsify(model, pattern="2:4").finalize()
    with pytest.raises(RuntimeError, match="no CUDA device.*no speedup"):
        hfprune.sparsity.to_semi_structured(model)
