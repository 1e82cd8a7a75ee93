"""Channel pruning contract for every CNN family: masked logits == pruned logits == load_pruned logits."""

from __future__ import annotations

import pytest
import torch
from cnn_models import FAMILIES, make_cnn, pixel_batch, random_channel_plan

import hfprune

CRITERIA = ("bn_scale", "l1", "magnitude", "taylor", "random")
TOL = 1e-4


def _logits(model, batch):
    with torch.no_grad():
        return model(pixel_values=batch["pixel_values"]).logits


def _contract(model, plan, tmp_path, batch):
    """Masked == pruned == reloaded; returns the pruned model and its reloaded copy."""
    base = _logits(model, batch)
    with hfprune.masked(model, plan):
        masked = _logits(model, batch)
    assert torch.equal(_logits(model, batch), base)  # the mask is gone again
    hfprune.prune(model, plan)
    pruned = _logits(model, batch)
    assert (masked - pruned).abs().max() <= TOL
    assert (base - pruned).abs().max() > TOL  # the plan really changed the model
    hfprune.save_pruned(model, tmp_path / "out")
    loaded = hfprune.load_pruned(tmp_path / "out")
    assert (_logits(loaded, batch) - pruned).abs().max() <= TOL
    return model, loaded


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("which", ["all", "inner", "coupled"])
def test_random_plans_masked_equals_pruned_equals_loaded(family, which, tmp_path):
    model = make_cnn(family)
    groups = hfprune.channel_groups(model)
    plan = hfprune.PruningPlan(channels=random_channel_plan(groups, seed=3, which=which))
    if not plan.channels:
        assert which == "coupled" and not any(g.coupled and g.prunable for g in groups.values())
        pytest.skip(f"{family} has no prunable coupled group")
    batch = pixel_batch()
    before = sum(p.numel() for p in model.parameters())
    model, loaded = _contract(model, plan, tmp_path, batch)
    assert sum(p.numel() for p in model.parameters()) < before
    sizes = {n: g.size for n, g in hfprune.channel_groups(loaded).items()}
    assert sizes == {n: g.size - len(plan.channels.get(n, [])) for n, g in groups.items()}
    assert hfprune.model_structure(loaded) == hfprune.model_structure(model)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("criterion", CRITERIA)
def test_every_criterion_plan_round_trips(family, criterion, tmp_path):
    model = make_cnn(family)
    batch = pixel_batch()
    if family == "convnext" and criterion == "bn_scale":
        with pytest.raises(ValueError, match="has no BatchNorm"):
            hfprune.channel_importance(model, criterion=criterion)
        return
    scores = hfprune.channel_importance(model, [batch, pixel_batch(seed=2)], criterion=criterion, seed=0)
    assert set(scores) == {n for n, g in hfprune.channel_groups(model).items() if g.prunable}
    assert all(s.shape == (scores.groups[n].size,) and torch.isfinite(s).all() for n, s in scores.items())
    scope = "layer" if criterion in ("l1", "magnitude") else "global"
    plan = hfprune.select_channels(scores, ratio=0.4, scope=scope)
    assert plan.num_channels() > 0
    plan = hfprune.PruningPlan.from_json(plan.to_json())
    _contract(model, plan, tmp_path, batch)


def test_scorers_leave_the_model_unchanged():
    model = make_cnn("resnet_bottleneck")
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    hfprune.channel_importance(model, [pixel_batch()], criterion="taylor")
    assert model.training and all(torch.equal(state[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_uniform_resnet_stage_widths_reload_with_plain_from_pretrained(tmp_path):
    from transformers import ResNetForImageClassification

    model = make_cnn("resnet_basic")
    groups = hfprune.channel_groups(model)
    # A basic block's inner width is its stage's width: halving both keeps the config's uniform layout.
    plan = hfprune.PruningPlan(channels={n: list(range(g.size // 2)) for n, g in groups.items() if g.prunable})
    batch = pixel_batch()
    model, _ = _contract(model, plan, tmp_path, batch)
    assert model.config.hidden_sizes == [4, 8, 12] and model.config.embedding_size == 4
    assert model.config.hfprune["plain_config"] is True
    plain = ResNetForImageClassification.from_pretrained(tmp_path / "out").eval()
    assert (_logits(plain, batch) - _logits(model, batch)).abs().max() <= TOL


def test_non_uniform_resnet_keeps_the_plain_config(tmp_path):
    model = make_cnn("resnet_bottleneck")
    name = "resnet.encoder.stages.0.layers.0.layer.0.convolution"
    hfprune.prune(model, hfprune.PruningPlan(channels={name: [0, 1]}))
    assert model.config.hidden_sizes == [16, 32]  # inner widths cannot be said there: the record carries them
    assert model.config.hfprune["channels"][name] == 2
    assert model.config.hfprune["plain_config"] is False
    assert model.config.hfprune["history"] == [{"channels": {name: [0, 1]}}]


def test_groups_resnet_names_and_coupling():
    model = make_cnn("resnet_basic")
    groups = hfprune.channel_groups(model)
    inner = groups["resnet.encoder.stages.0.layers.1.layer.0.convolution"]
    assert not inner.coupled and inner.size == 8
    assert inner.members == ("resnet.encoder.stages.0.layers.1.layer.0.convolution",
                             "resnet.encoder.stages.0.layers.1.layer.0.normalization",
                             "resnet.encoder.stages.0.layers.1.layer.1.convolution")
    # Stage 0 keeps the stem's width (identity shortcut): stem, both blocks' last convs, stage 1's shortcut.
    stem = groups["resnet.embedder.embedder.convolution"]
    assert stem.coupled and "resnet.encoder.stages.1.layers.0.shortcut.convolution" in stem.members
    assert "resnet.encoder.stages.0.layers.1.layer.1.convolution" in stem.members
    last = groups["resnet.encoder.stages.2.layers.0.shortcut.convolution"]
    assert last.coupled and "classifier.1" in last.members


def test_regnet_inner_groups_go_in_whole_groups():
    model = make_cnn("regnet")
    group = hfprune.channel_groups(model)["regnet.encoder.stages.1.layers.0.layer.0.convolution"]
    assert group.granularity == 4 and "regnet.encoder.stages.1.layers.0.layer.2.attention.2" in group.members
    scores = hfprune.channel_importance(model, criterion="l1")
    plan = hfprune.select_channels(scores, ratio=0.5, scope="layer")
    for name, removed in plan.channels.items():
        g = scores.groups[name].granularity
        assert len(removed) % g == 0 and all(removed[i] // g == removed[i + g - 1] // g
                                             for i in range(0, len(removed), g))


def test_convnext_stage_widths_are_reported_not_prunable():
    groups = hfprune.channel_groups(make_cnn("convnext"))
    widths = [g for g in groups.values() if not g.prunable]
    assert len(widths) == 2 and all("LayerNorm" in g.reason for g in widths)
    assert all(g.prunable and not g.coupled for n, g in groups.items() if n.endswith("pwconv1"))


def test_second_plan_composes_and_reloads(tmp_path):
    model = make_cnn("mobilenet_v2")
    batch = pixel_batch()
    for seed in (0, 1):
        plan = hfprune.PruningPlan(channels=random_channel_plan(hfprune.channel_groups(model), seed=seed))
        hfprune.prune(model, plan)
    hfprune.save_pruned(model, tmp_path / "twice")
    loaded = hfprune.load_pruned(tmp_path / "twice")
    assert (_logits(loaded, batch) - _logits(model, batch)).abs().max() <= TOL
    assert len(loaded.config.hfprune["history"]) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_remote_code_export_loads_with_plain_transformers(family, tmp_path):
    import transformers

    from hfprune.remote import add_remote_code

    model = make_cnn(family)
    hfprune.prune(model, hfprune.PruningPlan(channels=random_channel_plan(hfprune.channel_groups(model), seed=5)))
    folder = hfprune.save_pruned(model, tmp_path / "remote")
    add_remote_code(folder)
    arch = model.config.architectures[0]
    auto = transformers.AutoModelForImageClassification
    loaded = auto.from_pretrained(folder, trust_remote_code=True).eval()
    assert type(loaded).__name__ == arch
    batch = pixel_batch()
    assert (_logits(loaded, batch) - _logits(model, batch)).abs().max() <= TOL


@pytest.mark.parametrize("family", ["resnet_bottleneck", "regnet", "mobilenet_v2", "efficientnet"])
def test_base_model_keeps_its_output_width(family, tmp_path):
    """Without a classifier the last width is the model's output: reported, never pruned (masked == pruned)."""
    import transformers

    full = make_cnn(family)
    base = getattr(transformers, type(full).__name__.replace("ForImageClassification", "Model"))(full.config)
    base.load_state_dict(full.base_model.state_dict())
    base.eval()
    groups = hfprune.channel_groups(base)
    outputs = [g for g in groups.values() if not g.prunable]
    assert len(outputs) == 1 and "model's output" in outputs[0].reason
    plan = hfprune.PruningPlan(channels=random_channel_plan(groups, seed=2))
    x = pixel_batch()["pixel_values"]
    with torch.no_grad(), hfprune.masked(base, plan):
        masked = base(pixel_values=x).pooler_output
    hfprune.prune(base, plan)
    with torch.no_grad():
        pruned = base(pixel_values=x).pooler_output
    assert masked.shape == pruned.shape and (masked - pruned).abs().max() <= TOL
    hfprune.save_pruned(base, tmp_path / "base")
    with torch.no_grad():
        reloaded = hfprune.load_pruned(tmp_path / "base")(pixel_values=x).pooler_output
    assert (reloaded - pruned).abs().max() <= TOL
