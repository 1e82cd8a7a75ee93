"""Head / neuron importance against independent computations, and the scorer contract (no side effects)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, make_inputs, make_model

import hfprune
from hfprune.importance import normalize_heads


def close(actual: torch.Tensor, expected: torch.Tensor, tol: float = 1e-5) -> bool:
    """Equal to `tol` relative to the largest expected value (raw scores of tiny random models are ~1e-6, so an
    absolute 1e-5 would accept anything)."""
    scale = expected.double().abs().nan_to_num().max().clamp_min(1e-30)
    return torch.allclose(actual.double() / scale, expected.double() / scale, atol=tol, rtol=0, equal_nan=True)


def _batches(model, n: int = 3, batch: int = 2, seq: int = 7, seed: int = 1) -> list[dict]:
    out = []
    for i in range(n):
        inputs = make_inputs(model, batch=batch, seq=seq, seed=seed + i)
        if model.config.model_type == "vit":
            inputs["labels"] = torch.arange(batch) % 3
        elif model.config.model_type in ("llama", "gpt2"):
            labels = inputs["input_ids"].clone()
            labels[inputs["attention_mask"] == 0] = -100
            inputs["labels"] = labels
        else:
            inputs["labels"] = (torch.arange(batch) + i) % 3
        out.append(inputs)
    return out


def _gate_grads(model, batches, units: str = "heads") -> list[dict[int, torch.Tensor]]:
    """Per batch, layer -> d(batch loss)/d(unit gate), from our own hooks on the projection the gate sits on."""
    adapter = hfprune.get_adapter(model)
    head_dim = adapter.head_dim(model)
    blocks = adapter.layers(model)
    seen: dict[int, torch.Tensor] = {}

    def keep(idx):
        def hook(module, args):
            args[0].retain_grad()
            seen[idx] = args[0]
        return hook

    modules = [adapter.out_proj(b) if units == "heads" else adapter.ffn_out(b) for b in blocks]
    handles = [m.register_forward_pre_hook(keep(i)) for i, m in enumerate(modules)]
    out = []
    try:
        for batch in batches:
            seen.clear()
            model(**batch).loss.backward()
            grads = {}
            for idx, x in seen.items():
                term = x.detach() * x.grad  # dL/dg = sum of activation * upstream gradient (g = 1)
                if units == "heads":
                    term = term.unflatten(-1, (-1, head_dim)).sum(-1)
                grads[idx] = term.reshape(-1, term.shape[-1]).sum(0)
            out.append(grads)
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
    return out


def _tokens(batches) -> float:
    return float(sum(int(b["attention_mask"].sum()) for b in batches))


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_raw_michel_matches_independent_computation(family):
    model = make_model(family)
    batches = _batches(model)
    grads = _gate_grads(model, batches)
    expected = torch.stack([sum(g[i].abs() for g in grads) for i in range(3)]) / _tokens(batches)
    raw = hfprune.head_importance(model, batches, normalize_layers=False, normalize_global=False,
                                  show_progress=False)
    assert raw.dtype == torch.float32 and raw.shape == (3, 4) and raw.device.type == "cpu"
    assert close(raw, expected)
    assert raw.abs().sum() > 0
    # The default normalisation is L2 per layer then global min-max (the authors' code).
    by_layer = expected / expected.pow(2).sum(-1, keepdim=True).sqrt()
    default = (by_layer - by_layer.min()) / (by_layer.max() - by_layer.min())
    assert torch.allclose(hfprune.head_importance(model, batches, show_progress=False), default.float(), atol=1e-5)


@pytest.mark.parametrize("family", ["bert", "llama"])
def test_taylor_and_fisher_match_per_example_gradients(family):
    model = make_model(family)
    batches = _batches(model, n=3, batch=1)  # batch size 1: per-example terms are the batch gate gradients
    grads = _gate_grads(model, batches)
    tokens = _tokens(batches)
    michel = torch.stack([sum(g[i].abs() for g in grads) for i in range(3)]) / tokens
    fisher = torch.stack([sum(g[i].pow(2) for g in grads) for i in range(3)]) / tokens
    raw = {"normalize_layers": False, "normalize_global": False, "show_progress": False}
    assert close(hfprune.head_importance(model, batches, criterion="taylor", **raw), michel)
    assert close(hfprune.head_importance(model, batches, criterion="fisher", **raw), fisher)
    ngrads = _gate_grads(model, batches, units="neurons")
    taylor_n = hfprune.neuron_importance(model, batches, criterion="taylor", show_progress=False)
    for i, scores in enumerate(taylor_n):
        assert close(scores, sum(g[i].abs() for g in ngrads) / tokens)


def test_taylor_differs_from_michel_with_larger_batches():
    model = make_model("bert")
    batches = _batches(model, n=2, batch=4)
    michel = hfprune.head_importance(model, batches, show_progress=False)
    taylor = hfprune.head_importance(model, batches, criterion="taylor", show_progress=False)
    assert not torch.allclose(michel, taylor)


def test_normalisation_keeps_per_layer_ranking():
    model = make_model("bert")
    batches = _batches(model)
    raw = hfprune.head_importance(model, batches, normalize_layers=False, normalize_global=False,
                                  show_progress=False)
    for layer_norm in (False, True):
        for global_norm in (False, True):
            scores = normalize_heads(raw, by_layer=layer_norm, by_global=global_norm)
            assert torch.equal(scores.argsort(-1), raw.argsort(-1))
    normed = normalize_heads(raw)
    assert float(normed.min()) == 0.0 and float(normed.max()) == pytest.approx(1.0)


def test_dataloader_and_list_of_dicts_agree():
    model = make_model("bert")
    g = torch.Generator().manual_seed(0)
    examples = [{"input_ids": torch.randint(1, VOCAB, (7,), generator=g), "attention_mask": torch.ones(7).long(),
                 "labels": torch.tensor(i % 3)} for i in range(6)]
    loader = torch.utils.data.DataLoader(examples, batch_size=2)
    as_list = [{k: torch.stack([e[k] for e in examples[i:i + 2]]) for k in examples[0]} for i in range(0, 6, 2)]
    a = hfprune.head_importance(model, loader, show_progress=False)
    b = hfprune.head_importance(model, as_list, show_progress=False)
    assert torch.allclose(a, b, atol=1e-6)


def test_limits_max_batches_and_num_samples():
    model = make_model("bert")
    batches = _batches(model, n=3, batch=2)
    raw = {"normalize_layers": False, "normalize_global": False, "show_progress": False}
    two = hfprune.head_importance(model, batches[:2], **raw)
    assert close(hfprune.head_importance(model, batches, max_batches=2, **raw), two)
    cut = [batches[0], {k: v[:1] for k, v in batches[1].items()}]
    assert close(hfprune.head_importance(model, batches, num_samples=3, **raw),
                 hfprune.head_importance(model, cut, **raw))
    assert not close(two, hfprune.head_importance(model, batches, **raw))


def test_scoring_leaves_the_model_as_it_was():
    model = make_model("bert").train()
    model.classifier.eval()  # a mixed-mode model: per-module flags must come back
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    marker = torch.full_like(model.classifier.weight, 3.0)
    model.classifier.weight.grad = marker
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    modes = {n: m.training for n, m in model.named_modules()}
    batches = _batches(model)

    def check():
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
        assert {n: p.requires_grad for n, p in model.named_parameters()} == flags
        assert {n: m.training for n, m in model.named_modules()} == modes
        assert model.classifier.weight.grad is marker
        assert all(p.grad is None for n, p in model.named_parameters() if n != "classifier.weight")
        assert all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())

    for criterion in ("michel", "taylor", "fisher", "magnitude"):
        hfprune.head_importance(model, batches, criterion=criterion, show_progress=False)
        check()
    hfprune.neuron_importance(model, batches, show_progress=False)
    hfprune.layer_importance(model, batches, show_progress=False)
    hfprune.layer_importance(model, batches, method="gate", show_progress=False)
    check()
    broken = [batches[0], {k: v for k, v in batches[1].items() if k != "labels"}]
    with pytest.raises(ValueError, match="labels"):
        hfprune.head_importance(model, broken, show_progress=False)
    check()


def test_dropout_is_off_while_scoring():
    model = make_model("bert").train()
    batches = _batches(model)
    a = hfprune.head_importance(model, batches, show_progress=False)
    b = hfprune.head_importance(model, batches, show_progress=False)
    assert torch.equal(a, b)


def test_pruned_model_scores_are_nan_padded():
    model = make_model("llama")
    hfprune.prune(model, hfprune.PruningPlan(heads={0: [1], 1: [0, 1, 2, 3]}, neurons={2: list(range(10))}))
    batches = _batches(model)
    for criterion in ("michel", "taylor", "magnitude"):
        scores = hfprune.head_importance(model, batches, criterion=criterion, show_progress=False)
        assert scores.shape == (3, 4)
        assert torch.isnan(scores[0, 3]) and torch.isnan(scores[1]).all() and not torch.isnan(scores[2]).any()
        assert not torch.isnan(scores[0, :3]).any()
    neurons = hfprune.neuron_importance(model, batches, show_progress=False)
    assert [n.numel() for n in neurons] == [48, 48, 38]


def test_magnitude_is_the_l1_norm_of_the_head_weights():
    model = make_model("llama")  # GQA: 4 query heads share 2 KV heads
    adapter = hfprune.get_adapter(model)
    block = adapter.layers(model)[1]
    segments = {s.role: s.module for s in adapter.qkv_segments(block)}
    q, k, v = (segments[role].weight.detach() for role in ("q", "k", "v"))
    o = adapter.out_proj(block).weight.detach()
    n, n_kv, hd = adapter.num_heads(model, block), adapter.num_kv_heads(model, block), adapter.head_dim(model)
    assert (n, n_kv, hd) == (4, 2, 8)
    raw = hfprune.head_importance(model, criterion="magnitude", normalize_layers=False, normalize_global=False)
    for head in range(n):
        kv = head // (n // n_kv)  # query heads 0, 1 read KV head 0; heads 2, 3 read KV head 1
        rows, kv_rows = slice(head * hd, (head + 1) * hd), slice(kv * hd, (kv + 1) * hd)
        expected = q[rows].abs().sum() + k[kv_rows].abs().sum() + v[kv_rows].abs().sum() + o[:, rows].abs().sum()
        assert float(raw[1, head]) == pytest.approx(float(expected), rel=1e-5), head
    # The GQA mapping itself: larger keys of KV head 1 raise the scores of exactly the query heads it serves.
    with torch.no_grad():
        segments["k"].weight[hd:2 * hd] *= 3
    after = hfprune.head_importance(model, criterion="magnitude", normalize_layers=False, normalize_global=False)
    assert torch.equal(after[1, :2], raw[1, :2]) and (after[1, 2:] > raw[1, 2:]).all()
    assert torch.equal(after[[0, 2]], raw[[0, 2]])
    neurons = hfprune.neuron_importance(model, criterion="magnitude")
    mlp_in = adapter.ffn_in(block)
    with torch.no_grad():
        manual = sum(m.weight[5].abs().sum() for m in mlp_in) + adapter.ffn_out(block).weight[:, 5].abs().sum()
    assert float(neurons[1][5]) == pytest.approx(float(manual), rel=1e-5)


def test_gpt2_conv1d_magnitude_and_michel_run():
    model = make_model("gpt2")
    batches = _batches(model)
    for criterion in ("michel", "magnitude", "fisher"):
        scores = hfprune.head_importance(model, batches, criterion=criterion, show_progress=False)
        assert scores.shape == (3, 4) and torch.isfinite(scores).all()


def test_random_criterion_needs_a_seed_and_no_data():
    model = make_model("bert")
    a = hfprune.head_importance(model, criterion="random", seed=3)
    assert torch.equal(a, hfprune.head_importance(model, criterion="random", seed=3))
    assert not torch.equal(a, hfprune.head_importance(model, criterion="random", seed=4))
    with pytest.raises(ValueError, match="seed"):
        hfprune.head_importance(model, criterion="random")
    assert [t.numel() for t in hfprune.neuron_importance(model, criterion="random", seed=0)] == [48] * 3


def test_entropy_is_returned_with_the_scores():
    model = make_model("bert")
    batches = _batches(model)
    result = hfprune.head_importance(model, batches, return_entropy=True, show_progress=False)
    assert isinstance(result, hfprune.ImportanceResult)
    assert result.num_tokens == int(_tokens(batches))
    assert torch.equal(result.scores, hfprune.head_importance(model, batches, show_progress=False))
    assert result.entropy.shape == (3, 4)
    assert (result.entropy > 0).all() and (result.entropy <= math.log(7) + 1e-5).all()


@pytest.mark.parametrize("family", ["bert", "llama", "gpt2"])
def test_entropy_of_a_model_with_a_headless_layer_belongs_to_the_right_layer(family):
    # A layer with no head left returns no attention probabilities (the tuple is shorter): each layer's entropy must
    # still come from its own attention, i.e. equal the dense model's under the same mask at the kept heads.
    plan = hfprune.PruningPlan(heads={0: [0, 1, 2, 3], 1: [1]})
    dense = make_model(family)
    batches = _batches(dense)
    masked = hfprune.head_importance(dense, batches, return_entropy=True, plan=plan, show_progress=False).entropy
    pruned = hfprune.prune(make_model(family), plan)
    entropy = hfprune.head_importance(pruned, batches, return_entropy=True, show_progress=False).entropy
    assert torch.isnan(entropy[0]).all()
    assert torch.allclose(entropy[1, :3], masked[1, [0, 2, 3]], atol=1e-5) and torch.isnan(entropy[1, 3])
    assert torch.allclose(entropy[2], masked[2], atol=1e-5)


@pytest.mark.parametrize("criterion", ["taylor", "fisher", "magnitude"])
@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_neuron_scores_of_a_model_with_an_empty_ffn(family, criterion):
    # prune() supports a layer with every FFN neuron removed; its scores are an empty vector, the others equal the
    # dense model's under the same mask.
    plan = hfprune.PruningPlan(neurons={1: list(range(48)), 2: list(range(8))})
    dense = make_model(family)
    batches = _batches(dense)
    masked = hfprune.neuron_importance(dense, batches, criterion=criterion, plan=plan, show_progress=False)
    pruned = hfprune.prune(make_model(family), plan)
    scores = hfprune.neuron_importance(pruned, batches, criterion=criterion, show_progress=False)
    assert [s.numel() for s in scores] == [48, 0, 40]
    assert close(scores[0], masked[0]) and close(scores[2], masked[2][8:])


def test_vit_counts_examples_times_sequence_length():
    model = make_model("vit")
    batches = _batches(model, n=2, batch=3)
    result = hfprune.head_importance(model, batches, return_entropy=True, show_progress=False)
    assert result.num_tokens == 2 * 3 * 5  # 16x16 image, 8x8 patches: 4 patches + CLS


def test_layer_ablation_equals_loss_of_the_model_without_that_layer():
    import copy

    model = make_model("bert")
    batch = _batches(model, n=1)
    with torch.no_grad():
        base = float(model(**batch[0]).loss)
        expected = []
        for layer in range(3):
            smaller = hfprune.prune(copy.deepcopy(model), hfprune.PruningPlan(layers=[layer]))
            expected.append(float(smaller(**batch[0]).loss) - base)
    scores = hfprune.layer_importance(model, batch, show_progress=False)
    assert scores.shape == (3,)
    assert close(scores, torch.tensor(expected), tol=1e-4)  # float32 losses of two separate forward passes
    gate = hfprune.layer_importance(model, batch, method="gate", show_progress=False)
    assert gate.shape == (3,) and (gate >= 0).all() and gate.sum() > 0
    accuracy = hfprune.layer_importance(model, batch, metric_fn=lambda out, b: float(
        (out.logits.argmax(-1) == b["labels"]).float().mean()), show_progress=False)
    assert accuracy.shape == (3,)


# ----- bad input ------------------------------------------------------------------------------------------------------
def test_dataloader_without_labels_is_refused():
    model = make_model("bert")
    with pytest.raises(ValueError, match="no 'labels'"):
        hfprune.head_importance(model, [make_inputs(model)], show_progress=False)
    with pytest.raises(ValueError, match="no 'labels'"):
        hfprune.neuron_importance(model, [make_inputs(model)], show_progress=False)


def test_empty_dataloader_is_refused():
    model = make_model("bert")
    for call in (lambda: hfprune.head_importance(model, [], show_progress=False),
                 lambda: hfprune.neuron_importance(model, torch.utils.data.DataLoader([]), show_progress=False),
                 lambda: hfprune.layer_importance(model, [], show_progress=False)):
        with pytest.raises(ValueError, match="no batches"):
            call()
    with pytest.raises(ValueError, match="needs data"):
        hfprune.head_importance(model, None, show_progress=False)


def test_half_precision_on_cpu_is_refused():
    model = make_model("bert").half()
    batches = _batches(model)
    with pytest.raises(ValueError, match="float16 on CPU"):
        hfprune.head_importance(model, batches, show_progress=False)
    assert all(p.dtype == torch.float16 for p in model.parameters())


def test_unknown_criterion_and_bad_limits():
    model = make_model("bert")
    with pytest.raises(ValueError, match="criterion"):
        hfprune.head_importance(model, [], criterion="loss")
    with pytest.raises(ValueError, match="criterion"):
        hfprune.neuron_importance(model, [], criterion="michel")
    with pytest.raises(ValueError, match="max_batches"):
        hfprune.head_importance(model, _batches(model), max_batches=0, show_progress=False)
    with pytest.raises(ValueError, match="method"):
        hfprune.layer_importance(model, [], method="drop")


def test_scoring_under_a_plan_masks_all_of_its_units():
    # `plan=` used to mask only the unit kind being scored: neuron scores "under a plan" ignored its heads and layers.
    plan = hfprune.PruningPlan(heads={0: [0, 1], 1: [2]}, neurons={0: list(range(8))}, layers=[2])
    dense = make_model("bert")
    batches = _batches(dense)
    neurons = hfprune.neuron_importance(dense, batches, plan=plan, show_progress=False)
    heads = hfprune.head_importance(dense, batches, plan=plan, normalize_layers=False, normalize_global=False,
                                    show_progress=False)
    without_heads = hfprune.prune(make_model("bert"), hfprune.PruningPlan(heads=plan.heads, layers=plan.layers))
    expected = hfprune.neuron_importance(without_heads, batches, plan=hfprune.PruningPlan(neurons=plan.neurons),
                                         show_progress=False)
    assert close(neurons[0], expected[0]) and close(neurons[1], expected[1])
    assert not neurons[2].any()  # a masked layer passes the residual stream through: its neurons do not matter
    without_rest = hfprune.prune(make_model("bert"), hfprune.PruningPlan(neurons=plan.neurons, layers=plan.layers))
    expected = hfprune.head_importance(without_rest, batches, plan=hfprune.PruningPlan(heads=plan.heads),
                                       normalize_layers=False, normalize_global=False, show_progress=False)
    assert close(heads[:2], expected)
    assert not heads[2].any()


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_gradient_scorers_work_inside_no_grad(context):
    # Called from evaluation code under no_grad, scoring used to fail with "the loss does not depend on the heads
    # gates (does the model's forward reach the projections the adapter names?)", blaming the adapter.
    model = make_model("bert")
    batches = _batches(model)
    heads = hfprune.head_importance(model, batches, show_progress=False)
    neurons = hfprune.neuron_importance(model, batches, show_progress=False)
    layers = hfprune.layer_importance(model, batches, method="gate", show_progress=False)
    with context():
        assert torch.equal(hfprune.head_importance(model, batches, show_progress=False), heads)
        assert all(torch.equal(a, b) for a, b in zip(hfprune.neuron_importance(model, batches, show_progress=False),
                                                     neurons))
        assert torch.equal(hfprune.layer_importance(model, batches, method="gate", show_progress=False), layers)
        assert not torch.is_grad_enabled()


def test_dataloader_over_an_iterable_dataset_has_no_length_and_still_scores():
    # A streaming (Iterable) dataset's DataLoader raises TypeError on len(); scoring used to crash on it.
    model = make_model("bert")
    batches = _batches(model)

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(batches)

    loader = torch.utils.data.DataLoader(Stream(), batch_size=None)
    expected = hfprune.head_importance(model, batches, show_progress=False)
    assert torch.equal(hfprune.head_importance(model, loader, show_progress=False), expected)
    assert torch.equal(hfprune.head_importance(model, loader, max_batches=2, show_progress=False),
                       hfprune.head_importance(model, batches[:2], show_progress=False))
    assert hfprune.layer_importance(model, loader, show_progress=False).shape == (3,)
