"""Weight-level masks: criteria, patterns, scopes, targets and bad input (hfprune.sparsity)."""

from __future__ import annotations

import pytest
import torch

import hfprune
from hfprune.sparsity import resolve_targets, sparsify
from tests.conftest import logits_of, make_inputs, make_model


def _canonical(target):
    return target.canonical(target.weight.detach())


def _labelled_batches(model, n=3, seed=1):
    batches = []
    for i in range(n):
        inputs = make_inputs(model, seed=seed + i)
        inputs["labels"] = torch.tensor([0, 2])
        batches.append(inputs)
    return batches


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_layer_scope_hits_target_per_tensor(family):
    model = make_model(family)
    untouched = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = sparsify(model, 0.7)
    keys = set(handle.keys())
    assert len(keys) == 3 * len(hfprune.get_adapter(model).linear_paths())
    for target in handle.targets:
        w = target.weight.detach()
        zeros = int((w == 0).sum())
        assert abs(zeros - 0.7 * w.numel()) <= 1, target.key
        kept = w[w != 0].abs()
        assert untouched[target.key][w == 0].abs().max() <= kept.min()  # magnitude: the smallest went
    for name, param in model.named_parameters():
        if name not in keys:  # embeddings, LayerNorms, biases, heads stay as they were
            assert torch.equal(param, untouched[name]), name


def test_global_scope_hits_target_overall_and_ranks_across_tensors():
    model = make_model("bert")
    targets = {t.key: t for t in resolve_targets(model)}
    small, large = "bert.encoder.layer.0.attention.self.query.weight", "bert.encoder.layer.1.output.dense.weight"
    with torch.no_grad():  # one tensor of tiny weights, one of large weights: one ranking treats them unequally
        targets[small].weight.mul_(1e-3)
        targets[large].weight.mul_(10.0)
    original = {key: t.weight.detach().abs().clone() for key, t in targets.items()}
    handle = sparsify(model, 0.6, scope="global")
    total = sum(t.weight.numel() for t in handle.targets)
    zeros = sum(int((t.weight == 0).sum()) for t in handle.targets)
    assert abs(zeros - 0.6 * total) <= 1
    per_tensor = handle.tensor_sparsity()
    assert per_tensor[small] == 1.0 and per_tensor[large] < 0.1  # layer scope would give both 0.6
    # One threshold over all tensors: every kept weight is at least as large as every pruned one, wherever it is.
    kept = torch.cat([original[t.key][t.weight != 0] for t in handle.targets])
    pruned = torch.cat([original[t.key][t.weight == 0] for t in handle.targets])
    assert kept.min() >= pruned.max()


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_two_four_keeps_exactly_two_of_every_four_inputs(family):
    model = make_model(family)
    handle = sparsify(model, pattern="2:4")
    assert handle.config.sparsity == 0.5
    for target in handle.targets:
        w = _canonical(target)
        groups = (w.reshape(w.shape[0], -1, 4) != 0).sum(-1)
        assert torch.all(groups == 2), target.key


@pytest.mark.parametrize("pattern,rows,cols", [("1x4", 1, 4), ("4x4", 4, 4)])
def test_blocks_are_all_or_nothing(pattern, rows, cols):
    model = make_model("bert")
    handle = sparsify(model, 0.5, pattern=pattern)
    for target in handle.targets:
        w = _canonical(target)
        blocks = (w != 0).reshape(w.shape[0] // rows, rows, w.shape[1] // cols, cols).sum(dim=(1, 3))
        assert torch.all((blocks == 0) | (blocks == rows * cols)), target.key
        pruned_blocks = int((blocks == 0).sum())
        assert abs(pruned_blocks - 0.5 * blocks.numel()) <= 1


def test_taylor_ranks_by_weight_times_gradient_and_leaves_model_state():
    model = make_model("bert")
    model.train()
    model.bert.embeddings.word_embeddings.weight.requires_grad_(False)
    batches = _labelled_batches(model)
    target = resolve_targets(model)[0]
    # The criterion by hand: sum over batches of |w * dL/dw| (eval mode).
    model.eval()
    expected = torch.zeros_like(target.weight)
    for batch in batches:
        grad, = torch.autograd.grad(model(**batch).loss, target.weight)
        expected += (target.weight.detach() * grad).abs()
    model.train()
    before = target.weight.detach().clone()
    handle = sparsify(model, 0.5, criterion="taylor", dataloader=batches)
    assert model.training
    assert not model.bert.embeddings.word_embeddings.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    pruned = target.weight == 0
    assert int(pruned.sum()) == before.numel() // 2
    assert expected[pruned].max() <= expected[~pruned].min() + 1e-12
    magnitude = before.abs()
    assert not torch.equal(pruned, magnitude <= magnitude.flatten().kthvalue(before.numel() // 2).values)
    handle.remove()


def test_random_criterion_is_seeded_and_exact():
    masks = []
    for seed in (0, 0, 1):
        model = make_model("bert")
        handle = sparsify(model, 0.3, criterion="random", seed=seed)
        masks.append(torch.cat([m.flatten() for m in handle.masks.values()]))
        assert abs(handle.sparsity() - 0.3) < 1e-3
    assert torch.equal(masks[0], masks[1]) and not torch.equal(masks[0], masks[2])


def test_target_patterns_glob_regex_and_default():
    model = make_model("bert")
    names = [t.name for t in resolve_targets(model, ["default", "classifier"])]
    assert names[-1] == "classifier" and len(names) == 19
    glob = [t.name for t in resolve_targets(model, "*.intermediate.dense")]
    regex = [t.name for t in resolve_targets(model, r"bert\.encoder\.layer\.\d+\.intermediate\.dense")]
    assert glob == regex and len(glob) == 3
    # A wildcard that also matches embeddings and LayerNorms selects only the Linear layers.
    everything = resolve_targets(model, "*")
    assert all(isinstance(t.module, torch.nn.Linear) for t in everything) and len(everything) == 20


def test_gpt2_tied_head_is_never_a_target():
    model = make_model("gpt2")
    assert all(t.name != "lm_head" for t in resolve_targets(model, "*"))
    with pytest.raises(ValueError, match="lm_head.*tied to an embedding"):
        resolve_targets(model, "lm_head")


@pytest.mark.parametrize("kwargs,match", [
    ({"sparsity": 0.5, "targets": ["classifer"]}, "'classifer' matches no module"),
    ({"sparsity": 0.5, "targets": ["*embeddings*"]}, "matches only modules.*Embedding"),
    ({"sparsity": 1.0}, r"outside \[0, 1\)"),
    ({"sparsity": -0.1}, r"outside \[0, 1\)"),
    ({"sparsity": None}, "sparsity is required"),
    ({"pattern": "2:5"}, "divisible by M=5.*input size 32"),
    ({"sparsity": 0.7, "pattern": "2:4"}, "always has sparsity 0.5"),
    ({"sparsity": 0.5, "pattern": "3x5"}, r"divisible by \(3, 5\)"),
    ({"sparsity": 0.5, "pattern": "diagonal"}, "unknown pattern 'diagonal'"),
    ({"sparsity": 0.5, "criterion": "fisher"}, "criterion='fisher'"),
    ({"sparsity": 0.5, "scope": "model"}, "scope='model'"),
    ({"sparsity": 0.5, "criterion": "taylor"}, "needs a dataloader"),
])
def test_bad_input_raises_and_changes_nothing(kwargs, match):
    model = make_model("bert")
    inputs = make_inputs(model)
    before = logits_of(model, inputs)
    with pytest.raises(ValueError, match=match):
        sparsify(model, **kwargs)
    assert torch.equal(logits_of(model, inputs), before)
