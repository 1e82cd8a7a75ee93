from __future__ import annotations

import json

import pytest
import torch
import transformers
from conftest import logits_of, make_inputs, make_model
from safetensors.torch import load_file, save_file

import hfprune
from hfprune import PruningPlan


@pytest.mark.parametrize("family", ["llama", "qwen2", "qwen3", "mistral"])
def test_uniform_pruning_reloads_with_plain_from_pretrained(family, tmp_path):
    model = make_model(family)
    inputs = make_inputs(model)
    # The same heads (whole KV groups), FFN size and depth in every remaining layer: the stock config can say it.
    plan = PruningPlan(heads={i: [2, 3] for i in range(3)}, neurons={i: list(range(0, 48, 3)) for i in range(3)},
                       layers=[1])
    hfprune.prune(model, plan)
    pruned = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (2, 1, 8)
    assert config["intermediate_size"] == 32 and config["num_hidden_layers"] == 2
    plain = getattr(transformers, type(model).__name__).from_pretrained(tmp_path).eval()
    assert (logits_of(plain, inputs) - pruned).abs().max() <= 1e-5
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert (logits_of(auto, inputs) - pruned).abs().max() <= 1e-5


def test_layer_types_follow_removed_layers():
    model = make_model("qwen2")
    model.config.layer_types = ["full_attention", "sliding_attention", "full_attention"]
    hfprune.prune(model, PruningPlan(layers=[0]))
    assert model.config.layer_types == ["sliding_attention", "full_attention"]
    idx = [hfprune.get_adapter(model).attention(b).layer_idx for b in model.model.layers]
    assert idx == [0, 1]


def test_generation_with_cache_after_removing_all_heads_of_layer_0():
    model = make_model("llama")
    ids = make_inputs(model)["input_ids"][:1]
    plan = PruningPlan(heads={0: [0, 1, 2, 3]}, layers=[2])
    with hfprune.masked(model, plan):
        expected = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    hfprune.prune(model, plan)
    got = model.generate(ids, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(got, expected)


def test_shape_mismatched_checkpoint_names_the_tensor(tmp_path):
    model = make_model("bert")
    hfprune.prune(model, PruningPlan(heads={1: [0, 2]}))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    name = next(k for k in state if ".1.attention" in k and k.endswith("query.weight"))
    state[name] = torch.zeros(32, 32)
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=rf"{name}.*shape \(32, 32\)"):
        hfprune.load_pruned(tmp_path)


def test_missing_tensor_is_an_error_not_a_reinit(tmp_path):
    model = make_model("bert")
    hfprune.prune(model, PruningPlan(neurons={0: [1]}))
    model.save_pretrained(tmp_path)
    state = load_file(tmp_path / "model.safetensors")
    name = next(k for k in state if k.endswith("intermediate.dense.weight"))
    del state[name]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match=f"{name}.*missing"):
        hfprune.load_pruned(tmp_path)


def test_missing_record(tmp_path):
    make_model("bert").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'hfprune' record"):
        hfprune.load_pruned(tmp_path)


def test_pickle_checkpoints_are_never_loaded(tmp_path):
    model = make_model("bert")
    hfprune.prune(model, PruningPlan(heads={0: [0]}))
    model.config.save_pretrained(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(FileNotFoundError, match="never loads pickle"):
        hfprune.load_pruned(tmp_path)


def test_save_pruned_is_atomic_and_safetensors_only(tmp_path):
    model = make_model("distilbert")
    hfprune.prune(model, PruningPlan(heads={0: [1]}))
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("old")
    with pytest.raises(ValueError, match="safetensors"):
        hfprune.save_pruned(model, out, safe_serialization=False)
    assert (out / "keep.txt").read_text() == "old"  # refused before anything was written

    class Boom(RuntimeError):
        pass

    class BadTokenizer:
        def save_pretrained(self, path):
            raise Boom("disk full")

    with pytest.raises(Boom):
        hfprune.save_pruned(model, out, tokenizer=BadTokenizer(), overwrite=True)  # even asked to replace it
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary folder left behind

    # A folder holding a user's files is never replaced unasked: refused by name, nothing touched.
    with pytest.raises(FileExistsError, match=f"{out}.*not written by hfprune.*overwrite=True"):
        hfprune.save_pruned(model, out)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]
    hfprune.save_pruned(model, out, overwrite=True)  # asked for: replaced as a whole
    assert (out / "model.safetensors").exists() and not (out / "keep.txt").exists()
    hfprune.save_pruned(model, out)  # an earlier hfprune output (its marker) is replaced without asking
    inputs = make_inputs(model)
    # same attention kernel as the test model -> bit-identical logits
    assert torch.equal(logits_of(hfprune.load_pruned(out, attn_implementation="eager"), inputs),
                       logits_of(model, inputs))


@pytest.mark.parametrize("dtype", [None, "auto"])
def test_half_precision_model_reloads_in_its_saved_dtype(dtype, tmp_path):
    # As v5's from_pretrained: a bf16 model comes back in bf16 with the same logits (not silently upcast to fp32),
    # and dtype="auto" is accepted.
    model = make_model("llama").to(torch.bfloat16)
    hfprune.prune(model, PruningPlan(heads={0: [1]}, neurons={1: list(range(8))}))
    inputs = make_inputs(model)
    hfprune.save_pruned(model, tmp_path / "out")
    kwargs = {"attn_implementation": "eager"} | ({} if dtype is None else {"dtype": dtype})
    reloaded = hfprune.load_pruned(tmp_path / "out", **kwargs)
    assert reloaded.dtype == torch.bfloat16
    assert torch.equal(logits_of(reloaded, inputs), logits_of(model, inputs))
    assert hfprune.load_pruned(tmp_path / "out", dtype=torch.float32).dtype == torch.float32


def test_uniform_head_count_the_config_class_rejects_still_saves(tmp_path):
    # 3 heads in every layer of a 32-wide Llama: writing num_attention_heads=3 made LlamaConfig's own validation
    # (hidden_size % num_attention_heads == 0) refuse save_pretrained, so the pruned model could not be saved.
    model = make_model("llama")
    inputs = make_inputs(model)
    hfprune.prune(model, PruningPlan(heads={i: [1] for i in range(3)}, neurons={i: [0] for i in range(3)}))
    assert model.config.num_attention_heads == 4  # left as it was; the record carries the 3 heads
    assert model.config.intermediate_size == 47  # what the config can express is still written
    assert [s["heads"] for s in model.config.hfprune["layers"]] == [3, 3, 3]
    hfprune.save_pruned(model, tmp_path / "out")
    reloaded = hfprune.load_pruned(tmp_path / "out", attn_implementation="eager")
    assert hfprune.model_structure(reloaded) == hfprune.model_structure(model)
    assert torch.equal(logits_of(reloaded, inputs), logits_of(model, inputs))


def test_device_map_names_one_device_or_is_refused(tmp_path):
    model = make_model("bert")
    hfprune.prune(model, PruningPlan(heads={0: [1]}))
    model.save_pretrained(tmp_path)
    assert next(hfprune.load_pruned(tmp_path, device_map="cpu").parameters()).device.type == "cpu"
    assert next(hfprune.load_pruned(tmp_path, device_map="auto").parameters()).device.type == (
        "cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device_map=.*not supported"):
        hfprune.load_pruned(tmp_path, device_map={"": 0})
