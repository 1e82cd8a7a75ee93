"""Uniformly pruned decoders load with plain `from_pretrained` (no hfprune), including head counts that transformers
v5's LlamaConfig refuses (Llama 8 -> 6 heads, head_dim 8, hidden 64: written under the Mistral classes)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import transformers
from conftest import logits_of, make_inputs
from serving_util import load_plainly, save_reference

import hfprune
from hfprune import PruningPlan

DECODERS = ["llama", "mistral", "qwen2", "qwen3"]


def make_wide(family: str, seed: int = 0, **overrides):
    """hidden 64, 8 heads of head_dim 8 in 4 KV groups: 6 heads (hidden % 6 != 0) is what LlamaConfig refuses."""
    torch.manual_seed(seed)
    cls = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
    kwargs = {"vocab_size": 99, "hidden_size": 64, "num_hidden_layers": 3, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 8, "intermediate_size": 96, "max_position_embeddings": 64,
              "pad_token_id": 0, "tie_word_embeddings": family == "qwen2"}
    if family == "qwen2":
        kwargs["attention_bias"] = True
    kwargs.update(overrides)
    config = getattr(transformers, f"{cls}Config")(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(transformers, f"{cls}ForCausalLM")(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model.eval()


# Every layer loses one whole KV group (heads 6, 7 -> 6 heads, 3 KV heads) and the same number of FFN neurons; one
# layer goes: a uniform structure.
UNIFORM = PruningPlan(heads={i: [6, 7] for i in range(3)}, neurons={i: list(range(0, 96, 6)) for i in range(3)},
                      layers=[1])


@pytest.fixture(scope="module")
def plain_results(tmp_path_factory):
    root = tmp_path_factory.mktemp("plain")
    expected = {}
    for family in DECODERS:
        model = make_wide(family)
        hfprune.prune(model, UNIFORM)
        inputs = make_inputs(model)
        hfprune.save_pruned(model, root / family)
        save_reference(root / family, inputs, logits_of(model, inputs))
        expected[family] = json.loads((root / family / "config.json").read_text())
    return load_plainly(root), expected


@pytest.mark.parametrize("family", DECODERS)
def test_uniform_pruning_loads_plainly_without_hfprune(family, plain_results):
    results, configs = plain_results
    assert results[family]["diff"] <= 1e-5
    config = configs[family]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (6, 3, 8)
    assert config["intermediate_size"] == 80 and config["num_hidden_layers"] == 2
    # Llama's own config refuses 6 heads of a 64-wide model; the folder is written under the Mistral classes.
    expected = "MistralForCausalLM" if family == "llama" else f"{type(make_wide(family)).__name__}"
    assert results[family]["class"] == expected


def test_llama_stand_in_is_said_in_log_and_model_card_and_load_pruned_restores_llama(tmp_path, caplog):
    model = make_wide("llama")
    hfprune.prune(model, UNIFORM)
    inputs = make_inputs(model)
    with caplog.at_level(logging.INFO, logger="hfprune"):
        hfprune.save_pruned(model, tmp_path / "out")
    assert "loads with plain from_pretrained as MistralForCausalLM" in caplog.text
    assert str(tmp_path / "out") in caplog.text  # the final folder, not the temporary one
    card = (tmp_path / "out" / "README.md").read_text()
    assert "**MistralForCausalLM**" in card and "LlamaConfig rejects hidden_size % num_attention_heads" in card
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["model_type"] == "mistral" and config["sliding_window"] is None and "attention_bias" not in config
    reloaded = hfprune.load_pruned(tmp_path / "out", attn_implementation="eager")
    assert type(reloaded).__name__ == "LlamaForCausalLM"
    assert hfprune.model_structure(reloaded) == hfprune.model_structure(model)
    assert torch.equal(logits_of(reloaded, inputs), logits_of(model, inputs))
    assert model.config.model_type == "llama" and model.config.num_attention_heads == 8  # the model is unchanged


def test_llama_with_biases_has_no_stand_in_and_says_so(tmp_path, caplog):
    # Mistral has no attention bias, so it cannot run this model: the folder stays Llama + record (load_pruned).
    model = make_wide("llama", attention_bias=True)
    hfprune.prune(model, UNIFORM)
    inputs = make_inputs(model)
    with caplog.at_level(logging.INFO, logger="hfprune"):
        hfprune.save_pruned(model, tmp_path / "out")
    assert "needs hfprune.load_pruned" in caplog.text and "attention_bias=True" in caplog.text
    assert json.loads((tmp_path / "out" / "config.json").read_text())["model_type"] == "llama"
    assert "cannot build these shapes" in (tmp_path / "out" / "README.md").read_text()
    reloaded = hfprune.load_pruned(tmp_path / "out", attn_implementation="eager")
    assert torch.equal(logits_of(reloaded, inputs), logits_of(model, inputs))


def test_non_uniform_structure_card_points_to_load_pruned(tmp_path):
    model = make_wide("mistral")
    hfprune.prune(model, PruningPlan(heads={0: [0]}))
    hfprune.save_pruned(model, tmp_path / "out")
    card = (tmp_path / "out" / "README.md").read_text()
    assert "different heads counts ([7, 8])" in card and "hfprune.load_pruned" in card
    assert "| 0 | 7 | 7 | 96 |" in card  # a partial KV group: each KV head repeated (group size 1)


def test_stand_in_pruned_again_loads_as_what_it_is_now(tmp_path):
    # Loaded plainly as Mistral and pruned once more: the saved Llama config is stale, so it is not restored.
    model = make_wide("llama")
    hfprune.prune(model, UNIFORM)
    hfprune.save_pruned(model, tmp_path / "a")
    mistral = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "a", attn_implementation="eager").eval()
    hfprune.prune(mistral, PruningPlan(layers=[0]))
    inputs = make_inputs(mistral)
    hfprune.save_pruned(mistral, tmp_path / "b")
    reloaded = hfprune.load_pruned(tmp_path / "b", attn_implementation="eager")
    assert type(reloaded).__name__ == "MistralForCausalLM"
    assert torch.equal(logits_of(reloaded, inputs), logits_of(mistral, inputs))
