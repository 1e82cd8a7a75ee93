"""hfprune.stream.sparsify_checkpoint: Wanda / SparseGPT streamed checkpoint -> checkpoint equal the in-memory
`hfprune.sparsify` result, in float32 (logits) and bf16 (weights), and the output reloads with plain from_pretrained."""

from __future__ import annotations

import pytest
import torch
import transformers

import hfprune
from hfprune.stream import perplexity_checkpoint, prune_checkpoint, sparsify_checkpoint
from tests.conftest import VOCAB, logits_of, make_inputs, make_model


def batches(n=3, seq=16, seed=5):
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(1, VOCAB, (2, seq), generator=g),
             "attention_mask": torch.ones(2, seq, dtype=torch.long)} for _ in range(n)]


def _save(tmp_path, dtype):
    model = make_model("llama").to(dtype)
    folder = tmp_path / "src"
    model.save_pretrained(folder, max_shard_size="20KB")
    return folder


def _load(folder, dtype):
    return transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)


CASES = [("wanda", {"sparsity": 0.5}), ("sparsegpt", {"sparsity": 0.5}), ("wanda", {"pattern": "2:4"}),
         ("sparsegpt", {"pattern": "2:4"})]


@pytest.mark.parametrize("criterion,kwargs", CASES)
def test_streamed_float32_equals_in_memory(tmp_path, criterion, kwargs):
    source = _save(tmp_path, torch.float32)
    info = sparsify_checkpoint(source, tmp_path / "out", criterion=criterion, batches=batches(),
                               max_shard_size="20KB", **kwargs)
    streamed = _load(tmp_path / "out", torch.float32)
    reference = _load(source, torch.float32)
    hfprune.sparsify(reference, criterion=criterion, dataloader=batches(), keep_original=False, **kwargs)
    inputs = make_inputs(reference)
    diff = (logits_of(streamed, inputs) - logits_of(reference, inputs)).abs().max().item()
    assert diff <= 1e-5, diff
    assert info["blocks"] == streamed.config.num_hidden_layers and info["tokens"] == 3 * 2 * 16
    down = streamed.model.layers[0].mlp.down_proj.weight
    assert (down == 0).float().mean().item() == pytest.approx(0.5, abs=0.01)
    assert (tmp_path / "out" / "model.safetensors.index.json").is_file(), "sharded like the source"


@pytest.mark.parametrize("criterion", ["wanda", "sparsegpt"])
def test_streamed_bf16_has_the_in_memory_bf16_weights(tmp_path, criterion):
    source = _save(tmp_path, torch.bfloat16)
    sparsify_checkpoint(source, tmp_path / "out", criterion=criterion, sparsity=0.5, batches=batches(),
                        dtype=torch.bfloat16)
    streamed = _load(tmp_path / "out", None)
    assert streamed.dtype == torch.bfloat16, "bf16 stays bf16 on disk"
    reference = _load(source, torch.bfloat16)
    hfprune.sparsify(reference, criterion=criterion, sparsity=0.5, dataloader=batches(), keep_original=False)
    expected = reference.state_dict()
    for name, tensor in streamed.state_dict().items():
        assert torch.equal(tensor, expected[name]), name


def test_a_float32_computed_bf16_checkpoint_is_written_in_bf16(tmp_path):
    source = _save(tmp_path, torch.bfloat16)
    sparsify_checkpoint(source, tmp_path / "out", sparsity=0.5, batches=batches())
    streamed = _load(tmp_path / "out", None)
    assert {p.dtype for p in streamed.parameters()} == {torch.bfloat16}
    assert (streamed.model.layers[1].self_attn.q_proj.weight == 0).float().mean().item() == pytest.approx(0.5, 0.02)


def test_bad_criterion_and_bad_location_write_nothing(tmp_path):
    source = _save(tmp_path, torch.float32)
    with pytest.raises(ValueError, match="block by block"):
        sparsify_checkpoint(source, tmp_path / "out", criterion="magnitude", sparsity=0.5, batches=batches())
    with pytest.raises(ValueError, match="calibration data"):
        sparsify_checkpoint(source, tmp_path / "out", criterion="wanda", sparsity=0.5, batches=None)
    with pytest.raises(ValueError, match="inside the source"):
        sparsify_checkpoint(source, source / "out", criterion="wanda", sparsity=0.5, batches=batches())
    assert not (tmp_path / "out").exists() and not (source / "out").exists()


PLANS = {
    "heads+neurons": hfprune.PruningPlan(heads={0: [0, 2], 1: [1]}, neurons={0: [0, 5, 9], 1: [3]}),
    "layers": hfprune.PruningPlan(layers=[0]),
    "hidden": hfprune.PruningPlan(hidden=[0, 5, 9, 13]),
    "all": hfprune.PruningPlan(heads={1: [0]}, neurons={0: [1, 2]}, hidden=[3, 7], layers=[1]),
}


@pytest.mark.parametrize("name", list(PLANS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_streamed_structured_prune_equals_in_memory(tmp_path, name, dtype):
    source = _save(tmp_path, dtype)
    info = prune_checkpoint(source, tmp_path / "out", PLANS[name], max_shard_size="20KB")
    reference = _load(source, dtype)
    hfprune.prune(reference, PLANS[name])
    reference.save_pretrained(tmp_path / "ref")
    streamed = hfprune.load_pruned(tmp_path / "out", dtype=dtype)
    expected = reference.state_dict()
    assert set(streamed.state_dict()) == set(expected)
    for key, tensor in streamed.state_dict().items():
        assert torch.equal(tensor, expected[key]), key
    if dtype == torch.float32:  # bf16: the same weights (above) is the check
        inputs = make_inputs(reference)
        assert (logits_of(streamed, inputs) - logits_of(reference, inputs)).abs().max().item() <= 1e-5
    assert info["blocks"] == reference.config.num_hidden_layers


def test_a_uniform_plan_reloads_with_plain_from_pretrained(tmp_path):
    source = _save(tmp_path, torch.float32)
    config = transformers.AutoConfig.from_pretrained(source)
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    group = heads // kv
    plan = hfprune.PruningPlan(heads={i: list(range(group)) for i in range(config.num_hidden_layers)},
                               neurons={i: list(range(8)) for i in range(config.num_hidden_layers)})
    prune_checkpoint(source, tmp_path / "out", plan)
    plain = _load(tmp_path / "out", torch.float32)
    reference = _load(source, torch.float32)
    hfprune.prune(reference, plan)
    inputs = make_inputs(reference)
    assert plain.config.num_attention_heads == heads - group
    assert (logits_of(plain, inputs) - logits_of(reference, inputs)).abs().max().item() <= 1e-5


def test_a_plan_that_does_not_fit_writes_nothing(tmp_path):
    source = _save(tmp_path, torch.float32)
    with pytest.raises(ValueError, match="layer"):
        prune_checkpoint(source, tmp_path / "out", hfprune.PruningPlan(layers=[99]))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("stride", [None, 6])
def test_streamed_perplexity_equals_in_memory(tmp_path, stride):
    source = _save(tmp_path, torch.float32)
    data = batches(n=2, seq=16)
    data[0]["attention_mask"][0, -3:] = 0  # padding is not scored
    kwargs = {"stride": stride, "max_length": 10} if stride else {}
    streamed = perplexity_checkpoint(source, data, **kwargs)
    expected = hfprune.perplexity(_load(source, torch.float32), data, **kwargs)
    assert streamed == pytest.approx(expected, rel=1e-5)
    pruned = tmp_path / "pruned"
    sparsify_checkpoint(source, pruned, sparsity=0.5, batches=batches())
    assert perplexity_checkpoint(pruned, data, **kwargs) != pytest.approx(streamed, rel=1e-3), "pruned: differs"
