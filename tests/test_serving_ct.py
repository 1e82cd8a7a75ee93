"""export_compressed_tensors: int8 / int4 weights that plain transformers (+ compressed-tensors) loads, in a process
without hfprune, with the logits of the same model whose weights are the dequantized integers."""

from __future__ import annotations

import copy
import json
import sys

import pytest
import torch
from conftest import logits_of, make_inputs, make_model
from serving_util import load_plainly, save_reference
from test_serving_plain import UNIFORM, make_wide

import hfprune
from hfprune import PruningPlan

pytest.importorskip("compressed_tensors")
from hfprune.serving.compressed_tensors import fake_quantize, quantization_targets  # noqa: E402

CASES = [("llama", 8, None), ("llama", 4, 16), ("mistral", 8, None), ("qwen2", 4, 16), ("qwen3", 8, None),
         ("bert", 8, None)]


def _pruned(family: str):
    if family == "bert":  # a classifier: pooler and classifier stay float. FFN only: BERT's config has no head_dim
        model = make_model("bert")
        hfprune.prune(model, PruningPlan(neurons={i: [0, 5] for i in range(3)}))
        return model
    model = make_wide(family)
    hfprune.prune(model, UNIFORM)
    return model


def _fake_quantized(model, bits, group_size):
    """The model a loader should rebuild: every quantized weight replaced by its dequantized integers."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        for module in quantization_targets(ref).values():
            module.weight.copy_(fake_quantize(module.weight, bits, group_size))
    return ref


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    root = tmp_path_factory.mktemp("ct")
    info = {}
    for family, bits, group in CASES:
        model = _pruned(family)
        inputs = make_inputs(model)
        name = f"{family}-int{bits}-g{group}"
        hfprune.export_compressed_tensors(model, root / name, bits=bits, group_size=group)
        expected = logits_of(_fake_quantized(model, bits, group), inputs)
        save_reference(root / name, inputs, expected)
        info[name] = {"float_diff": (expected - logits_of(model, inputs)).abs().max().item(),
                      "config": json.loads((root / name / "config.json").read_text())}
    return load_plainly(root), info


@pytest.mark.parametrize("family,bits,group", CASES)
def test_export_loads_plainly_with_dequantized_logits(family, bits, group, exported):
    results, info = exported
    name = f"{family}-int{bits}-g{group}"
    assert results[name]["diff"] <= 1e-5
    assert info[name]["float_diff"] > 1e-6  # the weights really were quantized
    quant = info[name]["config"]["quantization_config"]
    weights = quant["config_groups"]["group_0"]["weights"]
    assert (weights["num_bits"], weights["group_size"], weights["symmetric"]) == (bits, group, True)
    assert weights["strategy"] == ("group" if group else "channel") and quant["format"] == "pack-quantized"
    if family == "llama":  # 6 heads of 64: written under the Mistral classes (see test_serving_plain)
        assert results[name]["class"] == "MistralForCausalLM"
    if family == "bert":
        assert {"classifier", "bert.pooler.dense"} <= set(quant["ignore"])
    else:
        assert "lm_head" in quant["ignore"]


def test_int8_folder_is_smaller_and_model_untouched(tmp_path):
    model = make_wide("mistral", num_hidden_layers=2, hidden_size=128, intermediate_size=256, head_dim=16)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hfprune.save_pruned(model, tmp_path / "float")
    hfprune.export_compressed_tensors(model, tmp_path / "int8")
    hfprune.export_compressed_tensors(model, tmp_path / "int4", bits=4, group_size=64)
    size = {n: (tmp_path / n / "model.safetensors").stat().st_size for n in ("float", "int8", "int4")}
    blocks = sum(m.weight.numel() for m in quantization_targets(model).values())
    # The block weights shrink 4x (int8) / 8x (int4) plus scales; embeddings and lm_head stay float32.
    assert size["float"] - size["int8"] >= 0.74 * 4 * blocks
    assert size["int4"] < size["int8"]
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert "int8 weights" in (tmp_path / "int8" / "README.md").read_text()


def test_non_uniform_pruned_folder_loads_with_load_pruned(tmp_path):
    model = make_wide("qwen3")
    hfprune.prune(model, PruningPlan(heads={0: [0, 1, 2, 3], 2: [5]}, neurons={1: list(range(16))}))
    inputs = make_inputs(model)
    hfprune.export_compressed_tensors(model, tmp_path / "q", bits=4, group_size=8)
    card = (tmp_path / "q" / "README.md").read_text()
    assert "hfprune.load_pruned" in card
    reloaded = hfprune.load_pruned(tmp_path / "q", attn_implementation="eager")
    assert hfprune.model_structure(reloaded) == hfprune.model_structure(model)
    assert getattr(reloaded.config, "quantization_config", None) is None  # a float model now
    expected = logits_of(_fake_quantized(model, 4, 8), inputs)
    assert (logits_of(reloaded, inputs) - expected).abs().max() <= 1e-5


def test_llama_stand_in_folder_comes_back_as_llama_through_load_pruned(tmp_path):
    model = make_wide("llama")
    hfprune.prune(model, UNIFORM)
    hfprune.export_compressed_tensors(model, tmp_path / "q")
    reloaded = hfprune.load_pruned(tmp_path / "q", attn_implementation="eager")
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    inputs = make_inputs(model)
    expected = logits_of(_fake_quantized(model, 8, None), inputs)
    assert (logits_of(reloaded, inputs) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("kwargs,match", [
    ({"bits": 3}, "bits must be 8 or 4, got 3"),
    ({"bits": True}, "bits must be 8 or 4"),
    ({"group_size": 0}, "group_size must be None"),
    ({"group_size": 128}, r"group_size=128 does not divide the input width 64 of model\.layers\.0\.self_attn\.q_proj"),
    ({"ignore": "lm_head"}, "ignore must be a sequence"),
    ({"ignore": ("re:.*",)}, "no nn.Linear to quantize"),
])
def test_bad_input_is_one_clear_error_and_nothing_written(kwargs, match, tmp_path):
    model = make_wide("mistral")
    with pytest.raises(ValueError, match=match):
        hfprune.export_compressed_tensors(model, tmp_path / "out", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_gpt2_conv1d_blocks_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match="no nn.Linear to quantize in the blocks of GPT2LMHeadModel.*Conv1D"):
        hfprune.export_compressed_tensors(make_model("gpt2"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_missing_package_names_it_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "compressed_tensors", None)  # import compressed_tensors -> ImportError
    with pytest.raises(ImportError, match=r"'compressed-tensors'.*hfprune\[serve\].*Nothing was written"):
        hfprune.export_compressed_tensors(make_wide("mistral"), tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_bf16_llama_classifier_stand_in_keeps_class_and_dtype(tmp_path):
    import transformers

    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=99, hidden_size=64, num_hidden_layers=2, num_attention_heads=8,
                                      num_key_value_heads=4, head_dim=8, intermediate_size=96, pad_token_id=0,
                                      num_labels=3)
    model = transformers.LlamaForSequenceClassification(config).eval()
    hfprune.prune(model, PruningPlan(heads={0: [6, 7], 1: [6, 7]}))
    model = model.to(torch.bfloat16)  # config.dtype still says float32 until a save_pretrained
    hfprune.export_compressed_tensors(model, tmp_path / "q")
    plain = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "q")
    assert (type(plain).__name__, plain.dtype) == ("MistralForSequenceClassification", torch.bfloat16)
    reloaded = hfprune.load_pruned(tmp_path / "q")
    assert (type(reloaded).__name__, reloaded.dtype) == ("LlamaForSequenceClassification", torch.bfloat16)
    ids = torch.randint(1, 99, (2, 7))
    with torch.no_grad():
        assert torch.allclose(plain(ids).logits.float(), reloaded(ids).logits.float(), atol=1e-2)
