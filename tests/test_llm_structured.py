"""Forward-only criteria for decoders (Minitron activations, block influence, angular distance) and uniform
structured selection, checked against independent computations on tiny random models."""

from __future__ import annotations

import math

import pytest
import torch
import transformers
from conftest import VOCAB, logits_of, make_inputs, make_model

import hfprune
from hfprune import PruningPlan


def _batches(model, n: int = 3, batch: int = 3, seq: int = 9) -> list[dict]:
    return [make_inputs(model, batch=batch, seq=seq, seed=10 + i) for i in range(n)]


def _captured(model, batches, module_of) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
    """Per layer, (input of `module_of(block)`, attention mask) per batch, from our own hooks."""
    blocks = hfprune.get_adapter(model).layers(model)
    seen = [[] for _ in blocks]
    current = {}

    def hook_for(i):
        def hook(module, args):
            seen[i].append((args[0].detach().clone(), current["mask"]))
        return hook

    handles = [module_of(b).register_forward_pre_hook(hook_for(i)) for i, b in enumerate(blocks)]
    try:
        with torch.no_grad():
            for batch in batches:
                current["mask"] = batch["attention_mask"].bool()
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return seen


def _reference(per_batch, unit_values) -> torch.Tensor:
    """Mean over each sequence's real tokens, then L2 over all sequences (loops, no vectorised shortcut)."""
    total = None
    for x, mask in per_batch:
        for b in range(x.shape[0]):
            tokens = [unit_values(x[b, t]) for t in range(x.shape[1]) if mask[b, t]]
            per_seq = torch.stack(tokens).double().mean(0)
            total = per_seq.pow(2) if total is None else total + per_seq.pow(2)
    return total.sqrt().float()


def test_activation_heads_are_l2_of_each_head_context():
    model = make_model("llama")
    adapter = hfprune.get_adapter(model)
    batches = _batches(model)
    got = hfprune.head_importance(model, batches, criterion="activation", normalize_layers=False,
                                  normalize_global=False, show_progress=False)
    head_dim = adapter.head_dim(model)
    seen = _captured(model, batches, adapter.out_proj)
    for layer, per_batch in enumerate(seen):
        expected = _reference(per_batch, lambda v: v.reshape(-1, head_dim).norm(dim=-1))
        assert torch.allclose(got[layer], expected, rtol=1e-5), layer


def test_activation_neurons_are_abs_of_gated_product():
    model = make_model("llama")
    batches = _batches(model)
    got = hfprune.neuron_importance(model, batches, criterion="activation", show_progress=False)
    # Independently: act(gate(x)) * up(x) from the MLP's own input, not from the down projection's input.
    mlps = [layer.mlp for layer in model.model.layers]
    seen = _captured(model, batches, lambda b: b.mlp)
    for layer, per_batch in enumerate(seen):
        mlp = mlps[layer]
        gated = [(mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x), m) for x, m in per_batch]
        expected = _reference(gated, lambda v: v.abs())
        assert torch.allclose(got[layer], expected, rtol=1e-5), layer


def test_activation_ignores_padding_and_batching():
    """Right padding in a causal LM does not change the real tokens, so padded batches == each row alone."""
    model = make_model("llama")
    batch = make_inputs(model, batch=3, seq=9, seed=4)
    batch["attention_mask"][1, -4:] = 0
    rows = []
    for b in range(3):
        n = int(batch["attention_mask"][b].sum())
        rows.append({"input_ids": batch["input_ids"][b:b + 1, :n], "attention_mask": torch.ones(1, n,
                                                                                                 dtype=torch.long)})
    for fn in (hfprune.head_importance, hfprune.neuron_importance):
        kwargs = {"normalize_global": False, "normalize_layers": False} if fn is hfprune.head_importance else {}
        padded = fn(model, [batch], criterion="activation", show_progress=False, **kwargs)
        alone = fn(model, rows, criterion="activation", show_progress=False, **kwargs)
        for a, b in zip(padded, alone):
            assert torch.allclose(a, b, rtol=1e-4)


def test_activation_options_and_plan_masking():
    model = make_model("llama")
    batches = _batches(model)
    base = hfprune.head_importance(model, batches, criterion="activation", show_progress=False)
    mean = hfprune.head_importance(model, batches, criterion="activation", batch_reduce="mean",
                                   show_progress=False)
    assert not torch.allclose(base, mean)
    masked = hfprune.head_importance(model, batches, criterion="activation", normalize_global=False,
                                     normalize_layers=False, plan=PruningPlan(heads={1: [0, 3]}),
                                     show_progress=False)
    assert masked[1, 0] == 0 and masked[1, 3] == 0 and masked[1, 1] > 0
    with pytest.raises(ValueError, match="batch_reduce"):
        hfprune.head_importance(model, batches, criterion="activation", batch_reduce="sum", show_progress=False)
    with pytest.raises(ValueError, match="seq_reduc"):
        hfprune.neuron_importance(model, batches, criterion="activation", seq_reduc="l2", show_progress=False)
    with pytest.raises(ValueError, match="needs data"):
        hfprune.neuron_importance(model, None, criterion="activation", show_progress=False)


def test_forward_criteria_need_no_labels_and_leave_the_model_as_it_was():
    model = make_model("llama")
    model.train()
    model.model.layers[0].mlp.up_proj.weight.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = _batches(model)
    assert all("labels" not in b for b in batches)
    hfprune.head_importance(model, batches, criterion="activation", show_progress=False)
    hfprune.neuron_importance(model, batches, criterion="activation", show_progress=False)
    hfprune.layer_importance(model, batches, method="block_influence", show_progress=False)
    hfprune.layer_importance(model, batches, method="angular", n=2, show_progress=False)
    assert model.training and all(m.training for m in model.modules())
    assert not model.model.layers[0].mlp.up_proj.weight.requires_grad
    assert model.model.layers[0].mlp.down_proj.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def _hidden_states(model, batches):
    """Per batch, the block inputs 0..L-1 from `output_hidden_states` (hidden_states[i] enters block i)."""
    with torch.no_grad():
        return [model(**b, output_hidden_states=True).hidden_states for b in batches]


def test_block_influence_is_one_minus_token_cosine():
    model = make_model("llama")
    batches = _batches(model)
    got = hfprune.layer_importance(model, batches, method="block_influence", show_progress=False)
    n_layers = len(model.model.layers)
    states = _hidden_states(model, batches)
    for layer in range(n_layers - 1):  # the last entry of hidden_states is after the final norm
        total, tokens = 0.0, 0
        for batch, hs in zip(batches, states):
            for b in range(hs[0].shape[0]):
                for t in range(hs[0].shape[1]):
                    if batch["attention_mask"][b, t]:
                        x, y = hs[layer][b, t].double(), hs[layer + 1][b, t].double()
                        total += 1 - float(x @ y / (x.norm() * y.norm()))
                        tokens += 1
        assert math.isclose(float(got[layer]), total / tokens, rel_tol=1e-5), layer
    assert got.shape == (n_layers,) and (got > 0).all()


def _deeper_llama(layers: int = 6):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_attention_heads=4,
                                      num_key_value_heads=2, head_dim=8, num_hidden_layers=layers,
                                      max_position_embeddings=64, pad_token_id=0)
    return transformers.LlamaForCausalLM(config).eval()


def test_angular_distance_at_last_real_token_and_contiguous_block():
    model = _deeper_llama()
    batches = _batches(model)
    n = 2
    from hfprune.criteria.angular import block_distances

    distances = block_distances(model, batches, n=n, show_progress=False)
    states = _hidden_states(model, batches)
    for start in range(len(distances) - 1):  # starts whose end is a block input (not the final-norm output)
        values = []
        for batch, hs in zip(batches, states):
            for b in range(hs[0].shape[0]):
                last = int(batch["attention_mask"][b].nonzero().max())
                x, y = hs[start][b, last].double(), hs[start + n][b, last].double()
                values.append(math.acos(max(-1.0, min(1.0, float(x @ y / (x.norm() * y.norm()))))) / math.pi)
        assert math.isclose(float(distances[start]), sum(values) / len(values), rel_tol=1e-5), start
    scores = hfprune.layer_importance(model, batches, method="angular", n=n, show_progress=False)
    best = int(distances.argmin())
    plan = hfprune.select_layers(scores, count=n, contiguous=True)
    assert plan.layers == [best, best + 1]
    every = block_distances(model, batches, n=n, tokens="all", show_progress=False)
    assert every.shape == distances.shape and not torch.allclose(every, distances)
    with pytest.raises(ValueError, match="n \\(the number of consecutive layers"):
        hfprune.layer_importance(model, batches, method="angular", n=6, show_progress=False)


def test_select_layers_contiguous_takes_the_lowest_window():
    scores = torch.tensor([0.5, 0.1, 0.9, 0.2, 0.2, 0.3])
    assert hfprune.select_layers(scores, count=2).layers == [1, 3]
    assert hfprune.select_layers(scores, count=2, contiguous=True).layers == [3, 4]
    assert hfprune.select_layers(scores, count=3, contiguous=True).layers == [3, 4, 5]
    assert hfprune.select_layers(scores, ratio=0.0, contiguous=True).layers == []


def _smol_shaped(family: str = "llama", layers: int = 3):
    """SmolLM2's attention layout (9 query heads, 3 KV heads) at a tiny width: hidden 72, head_dim 8."""
    torch.manual_seed(0)
    cls = {"llama": transformers.LlamaConfig, "mistral": transformers.MistralConfig,
           "qwen2": transformers.Qwen2Config, "qwen3": transformers.Qwen3Config}[family]
    config = cls(vocab_size=VOCAB, hidden_size=72, intermediate_size=128, num_attention_heads=9,
                 num_key_value_heads=3, head_dim=8, num_hidden_layers=layers, max_position_embeddings=64,
                 pad_token_id=0)
    arch = {"llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM", "qwen2": "Qwen2ForCausalLM",
            "qwen3": "Qwen3ForCausalLM"}[family]
    return getattr(transformers, arch)(config).eval()


def test_uniform_heads_whole_groups_and_even_per_group():
    scores = torch.tensor([[0.9, 0.8, 0.7, 0.1, 0.2, 0.3, 0.5, 0.6, 0.4],
                           [0.1, 0.1, 0.1, 0.9, 0.9, 0.9, 0.2, 0.0, 0.8]])
    whole = hfprune.select_heads(scores, ratio=0.25, uniform=True, num_kv_heads=3)
    assert whole.heads == {0: [3, 4, 5], 1: [0, 1, 2]}  # one whole group (lowest sum) per layer
    even = hfprune.select_heads(scores, ratio=0.25, uniform=True, num_kv_heads=3, group_mode="even")
    assert even.heads == {0: [2, 3, 8], 1: [0, 3, 7]}  # the lowest head of every group (ties: first)
    assert hfprune.select_heads(scores, count=6, uniform=True, num_kv_heads=3).heads[0] == [3, 4, 5, 6, 7, 8]
    with pytest.raises(ValueError, match="multiple of 3"):
        hfprune.select_heads(scores, count=2, uniform=True, num_kv_heads=3)
    with pytest.raises(ValueError, match="would leave 0"):
        hfprune.select_heads(scores, count=9, uniform=True, num_kv_heads=3)
    with pytest.raises(ValueError, match="group_mode"):
        hfprune.select_heads(scores, ratio=0.25, uniform=True, num_kv_heads=3, group_mode="half")
    ragged = scores.clone()
    ragged[1, 8] = float("nan")
    with pytest.raises(ValueError, match="same number of heads in every layer"):
        hfprune.select_heads(ragged, ratio=0.25, uniform=True, num_kv_heads=3)


def test_uniform_neurons_same_width_rounded():
    torch.manual_seed(0)
    scores = [torch.rand(1536) for _ in range(3)]
    plan = hfprune.select_neurons(scores, ratio=0.25, uniform=True)  # round_to=64 by default
    assert [1536 - len(plan.neurons[i]) for i in range(3)] == [1152] * 3
    for i in range(3):  # the lowest-scored neurons of each layer
        assert set(plan.neurons[i]) == set(scores[i].argsort()[:384].tolist())
    odd = hfprune.select_neurons(scores, ratio=0.3, uniform=True)
    assert {1536 - len(v) for v in odd.neurons.values()} == {1088}  # 1075.2 -> nearest multiple of 64
    exact = hfprune.select_neurons(scores, ratio=0.3, uniform=True, round_to=1)
    assert {len(v) for v in exact.neurons.values()} == {461}
    with pytest.raises(ValueError, match="same number of neurons"):
        hfprune.select_neurons([torch.rand(64), torch.rand(128)], ratio=0.5, uniform=True)


@pytest.mark.parametrize("family", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("group_mode", ["whole", "even"])
def test_uniform_activation_pruning_reloads_with_plain_from_pretrained(family, group_mode, tmp_path):
    model = _smol_shaped(family)
    batches = _batches(model)
    heads = hfprune.head_importance(model, batches, criterion="activation", show_progress=False)
    neurons = hfprune.neuron_importance(model, batches, criterion="activation", show_progress=False)
    plan = hfprune.select_heads(heads, ratio=0.25, uniform=True, model=model, group_mode=group_mode)
    plan.neurons = hfprune.select_neurons(neurons, ratio=0.25, uniform=True, round_to=32).neurons
    inputs = make_inputs(model)
    with hfprune.masked(model, plan):
        masked = logits_of(model, inputs)
    hfprune.prune(model, plan)
    structure = hfprune.model_structure(model)
    assert structure["heads"] == [6] * 3 and structure["ffn"] == [96] * 3
    assert structure["kv_heads"] == [2 if group_mode == "whole" else 3] * 3
    pruned = logits_of(model, inputs)
    assert (pruned - masked).abs().max() <= 1e-5
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(plain) is type(model)
    assert plain.config.num_attention_heads == 6 and plain.config.intermediate_size == 96
    assert (logits_of(plain, inputs) - pruned).abs().max() <= 1e-5


def test_depth_pruning_by_block_influence_reloads_plain(tmp_path):
    model = _deeper_llama()
    batches = _batches(model)
    scores = hfprune.layer_importance(model, batches, method="block_influence", show_progress=False)
    plan = hfprune.select_layers(scores, count=2)
    assert plan.layers == sorted(scores.argsort()[:2].tolist())
    hfprune.prune(model, plan)
    inputs = make_inputs(model)
    pruned = logits_of(model, inputs)
    model.save_pretrained(tmp_path)
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert plain.config.num_hidden_layers == 4
    assert (logits_of(plain, inputs) - pruned).abs().max() <= 1e-5


def test_forward_criteria_run_on_every_family(family):
    model = make_model(family)
    batches = [make_inputs(model, batch=2, seq=7, seed=s) for s in range(2)]
    adapter = hfprune.get_adapter(model)
    blocks = adapter.layers(model)
    heads = hfprune.head_importance(model, batches, criterion="activation", show_progress=False)
    neurons = hfprune.neuron_importance(model, batches, criterion="activation", show_progress=False)
    assert heads.shape == (len(blocks), adapter.num_heads(model, blocks[0])) and torch.isfinite(heads).all()
    assert [n.numel() for n in neurons] == [adapter.intermediate_size(b) for b in blocks]
    assert all(bool((n >= 0).all()) and float(n.sum()) > 0 for n in neurons)
    for method, extra in (("block_influence", {}), ("angular", {"n": 1})):
        scores = hfprune.layer_importance(model, batches, method=method, show_progress=False, **extra)
        assert scores.shape == (len(blocks),) and torch.isfinite(scores).all() and (scores > 0).all(), method
