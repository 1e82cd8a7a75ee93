"""Removed-channel compensation: masked == pruned == reloaded with it, it really cancels the mean shift, masks
restore the model exactly, and bad input is refused before anything changes."""

from __future__ import annotations

import copy

import pytest
import torch
from cnn_models import FAMILIES, make_cnn, pixel_batch, random_channel_plan

import hfprune

TOL = 1e-4
CALIB = [pixel_batch(8, seed=11), pixel_batch(8, seed=12)]
X = torch.cat([b["pixel_values"] for b in CALIB])


def _logits(model, x=X):
    with torch.no_grad():
        return model(pixel_values=x).logits


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


def _no_hooks(model):
    return not any(m._forward_pre_hooks or m._forward_hooks for m in model.modules())


def _plan(model, which="all"):
    return hfprune.PruningPlan(channels=random_channel_plan(hfprune.channel_groups(model), seed=3, which=which))


@pytest.mark.parametrize("family", FAMILIES)
def test_compensated_masked_equals_pruned_equals_loaded(family, tmp_path):
    model = make_cnn(family)
    plan = _plan(model)
    state, base = _state(model), _logits(model)
    with hfprune.masked(model, plan):
        uncompensated = _logits(model)
    comp = hfprune.channel_compensation(model, plan, CALIB)
    assert _unchanged(model, state) and _no_hooks(model) and comp.num_batches == 2
    with hfprune.masked(model, plan, compensate=CALIB):  # batches: measured inside, the same as `comp`
        masked = _logits(model)
    assert _unchanged(model, state) and _no_hooks(model)  # remove() restored every bias / running mean exactly
    assert torch.equal(_logits(model), base)
    # The fold does something, and it lowers the shift of the mean logits on the calibration data.
    assert (masked - uncompensated).abs().max() > TOL
    shift = lambda logits: float((logits.mean(0) - base.mean(0)).norm())  # noqa: E731
    assert shift(masked) < 0.5 * shift(uncompensated)
    hfprune.prune(model, plan, compensate=comp)
    pruned = _logits(model)
    assert (masked - pruned).abs().max() <= TOL
    hfprune.save_pruned(model, tmp_path / "out")
    loaded = hfprune.load_pruned(tmp_path / "out")
    assert (_logits(loaded) - pruned).abs().max() <= TOL


def _target_means(model, paths):
    """Mean over the calibration data of each module's output, per output channel."""
    means, handles = {}, []
    for path in paths:
        module = model.get_submodule(path)
        dim = -1 if isinstance(module, torch.nn.Linear) else 1

        def hook(module, args, out, path=path, dim=dim):
            means[path] = out.movedim(dim, -1).reshape(-1, out.shape[dim]).double().mean(0)

        handles.append(module.register_forward_hook(hook))
    _logits(model)
    for handle in handles:
        handle.remove()
    return means


@pytest.mark.parametrize("family", FAMILIES)
def test_one_group_keeps_every_consumer_mean_output(family):
    """One group removed: its consumers' other inputs are untouched, so the fold restores their mean output (at the
    bias, or after the BatchNorm whose running mean moved) exactly, on the calibration data. A consumer behind a
    squeeze-and-excitation block is the exception: the SE gate read the removed channels too and rescales the kept
    ones per image, so there the fold only cancels most of the shift."""
    model = make_cnn(family)
    groups = hfprune.channel_groups(model)
    free = random_channel_plan(groups, seed=3, which="inner")
    # An SE block's group where there is one (RegNet-Y, EfficientNet), else the first free group.
    group_name = next((n for n in free if groups[n].paths("scale")), next(iter(free)))
    group, removed = groups[group_name], free[group_name]
    plan = hfprune.PruningPlan(channels={group_name: removed})
    comp = hfprune.channel_compensation(model, plan, CALIB)
    assert set(comp.targets) == set(group.paths("in"))
    kinds = [op.kind for op in group.ops]
    behind_se = {op.path for i, op in enumerate(group.ops) if op.kind == "in" and "scale" in kinds[:i]}
    targets = {consumer: path for consumer, (path, _) in comp.targets.items()}
    before = _target_means(model, targets.values())
    with hfprune.masked(model, plan):
        plain = _target_means(model, targets.values())
    with hfprune.masked(model, plan, compensate=comp):
        folded = _target_means(model, targets.values())
    for consumer, path in targets.items():
        scale = before[path].abs().max() + 1
        error, shift = (folded[path] - before[path]).abs().max(), (plain[path] - before[path]).abs().max()
        assert shift > 1e-4 * scale  # without the fold the mean does move (10x the tolerance below)
        assert error <= (0.05 * shift if consumer in behind_se else 1e-5 * scale), (consumer, error, shift)
    assert behind_se or family not in ("regnet", "efficientnet")  # the SE case is really exercised


@pytest.mark.parametrize("family", FAMILIES)
def test_sequential_keeps_every_consumer_mean_output_of_a_whole_plan(family, tmp_path):
    """Sequential offsets are measured with everything upstream already masked and folded, so every consumer's mean
    output is the original one, behind an SE gate and behind other removals too; masked == pruned still holds."""
    model = make_cnn(family)
    plan = _plan(model)
    comp = hfprune.channel_compensation(model, plan, CALIB, sequential=True)
    one_shot = hfprune.channel_compensation(model, plan, CALIB)
    assert comp.targets == one_shot.targets
    targets = [path for path, _ in comp.targets.values()]
    before = _target_means(model, targets)
    drift = {}
    for name, c in (("one-shot", one_shot), ("sequential", comp)):
        with hfprune.masked(model, plan, compensate=c):
            means = _target_means(model, targets)
        drift[name] = max(float((means[p] - before[p]).abs().max() / (before[p].abs().max() + 1)) for p in targets)
    assert drift["sequential"] <= 1e-5 and drift["sequential"] < 0.1 * drift["one-shot"], drift
    with hfprune.masked(model, plan, compensate=comp):
        masked = _logits(model)
    hfprune.prune(model, plan, compensate=comp)
    assert (_logits(model) - masked).abs().max() <= TOL


def test_sequential_equals_one_shot_without_upstream_removals():
    model = make_cnn("resnet_basic")
    plan = hfprune.PruningPlan(channels={"resnet.encoder.stages.0.layers.0.layer.0.convolution": [1, 4, 6]})
    a = hfprune.channel_compensation(model, plan, CALIB)
    b = hfprune.channel_compensation(model, plan, iter(CALIB), sequential=True)  # an iterator is read once
    assert a.shifts.keys() == b.shifts.keys()
    assert all(torch.allclose(a.shifts[p], b.shifts[p], atol=1e-5) for p in a.shifts)


def test_bias_and_running_mean_targets_follow_the_adapter():
    model = make_cnn("resnet_basic")
    inner = "resnet.encoder.stages.0.layers.0.layer.0.convolution"
    comp = hfprune.channel_compensation(model, hfprune.PruningPlan(channels={inner: [1, 4]}), CALIB)
    # The 3x3 consumer has no bias: the BatchNorm after it takes the fold, on its running mean.
    assert comp.targets == {"resnet.encoder.stages.0.layers.0.layer.1.convolution":
                            ("resnet.encoder.stages.0.layers.0.layer.1.normalization", "running_mean")}
    head = [n for n, g in hfprune.channel_groups(model).items() if "classifier.1" in g.paths("in")][0]
    comp = hfprune.channel_compensation(model, hfprune.PruningPlan(channels={head: [0]}), CALIB, max_batches=1)
    assert comp.targets["classifier.1"] == ("classifier.1", "bias") and comp.num_batches == 1


def test_remove_keeps_what_training_changed():
    model = make_cnn("convnext")
    plan = _plan(model)
    state = _state(model)
    handle = hfprune.mask(model, plan, compensate=CALIB)
    path = next(iter(handle.channel_gates)).replace("pwconv1", "pwconv2")
    bias = model.get_submodule(path).bias
    with torch.no_grad():
        bias.add_(1.0)  # as an optimizer step would, while masked
    handle.remove()
    assert torch.allclose(bias, state[f"{path}.bias"] + 1.0, atol=1e-6)  # the fold is gone, the update stays
    assert _no_hooks(model)


def test_measuring_leaves_the_model_and_its_mode_unchanged():
    model = make_cnn("efficientnet").train()
    state = _state(model)
    hfprune.channel_compensation(model, _plan(model), CALIB)
    assert model.training and _unchanged(model, state) and _no_hooks(model)


def _refused(model, plan, compensate, error, match):
    state, config = _state(model), model.config.to_dict()
    for action in (hfprune.prune, hfprune.mask):
        with pytest.raises(error, match=match):
            action(model, plan, compensate=compensate)
    assert _unchanged(model, state) and model.config.to_dict() == config and _no_hooks(model)


@pytest.mark.parametrize("compensate, error, match", [
    ([], ValueError, "yielded no batch"),
    ([{"labels": torch.zeros(2)}], ValueError, "must be a dict with 'pixel_values'"),
    (CALIB[0], TypeError, "a single batch goes in a list"),
    (True, TypeError, "no data-free estimate"),
])
def test_bad_compensation_data_is_refused_before_any_change(compensate, error, match):
    model = make_cnn("resnet_bottleneck")
    _refused(model, _plan(model), compensate, error, match)


def test_a_stale_or_foreign_compensation_is_refused():
    model = make_cnn("regnet")
    plan = _plan(model, which="inner")
    comp = hfprune.channel_compensation(model, plan, CALIB)
    other = hfprune.PruningPlan(channels=dict(list(plan.channels.items())[:1]))
    _refused(model, other, comp, ValueError, "measured for a different plan")
    pruned = copy.deepcopy(model)
    hfprune.prune(pruned, other)
    name = next(iter(other.channels))
    stale = hfprune.PruningPlan(channels={name: [0, 1, 2, 3]})
    comp = hfprune.channel_compensation(model, stale, CALIB)
    _refused(pruned, stale, comp, ValueError, f"group '{name}' had")
    with pytest.raises(ValueError, match="positive integer"):
        hfprune.channel_compensation(model, plan, CALIB, max_batches=0)


def test_a_consumer_with_nowhere_to_fold_is_refused():
    model = make_cnn("resnet_basic")
    model.resnet.encoder.stages[0].layers[0].layer[1].normalization = torch.nn.Identity()
    plan = hfprune.PruningPlan(channels={"resnet.encoder.stages.0.layers.0.layer.0.convolution": [0]})
    _refused(model, plan, CALIB, ValueError, "layer.1.convolution .* has no bias and no BatchNorm")


def test_compensation_needs_a_compensable_plan_and_the_models_inputs():
    from transformers import BertConfig, BertForSequenceClassification

    model = BertForSequenceClassification(BertConfig(vocab_size=32, hidden_size=16, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=8))
    _refused(model, hfprune.PruningPlan(layers=[0]), CALIB, ValueError, "applies to plans that remove heads")
    _refused(model, hfprune.PruningPlan(heads={0: [0]}), CALIB, ValueError, "must be a dict with 'input_ids'")
