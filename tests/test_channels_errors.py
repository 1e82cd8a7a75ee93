"""Bad input for channel pruning: clear errors naming the thing, raised before the model changes."""

from __future__ import annotations

import pytest
import torch
from cnn_models import make_cnn, pixel_batch

import hfprune
from hfprune.callbacks.slimming import NetworkSlimmingCallback

STAGE0_INNER = "resnet.encoder.stages.0.layers.0.layer.0.convolution"


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _unchanged(model, state):
    now = model.state_dict()
    return set(now) == set(state) and all(torch.equal(now[k], state[k]) for k in state)


@pytest.mark.parametrize("channels, match", [
    ({"resnet.encoder.stages.9.layers.0.layer.0.convolution": [0]}, "has no channel group"),
    # A member conv of the stem's coupled group (stage 0 block 1's last conv): the error names the group.
    ({"resnet.encoder.stages.0.layers.1.layer.1.convolution": [0]},
     "member of the coupled group 'resnet.embedder.embedder.convolution'"),
    ({"resnet.encoder.stages.0.layers.1.layer.0.normalization": [0]}, "member of the group"),
    ({STAGE0_INNER: [8]}, "index 8 is out of range"),
    ({STAGE0_INNER: list(range(8))}, "would lose all its 8 channels"),
])
def test_bad_plans_are_refused_before_any_change(channels, match):
    model = make_cnn("resnet_basic")
    state = _state(model)
    config = model.config.to_dict()
    plan = hfprune.PruningPlan(channels=channels)
    for action in (hfprune.prune, hfprune.mask):
        with pytest.raises(ValueError, match=match):
            action(model, plan)
    assert _unchanged(model, state) and model.config.to_dict() == config
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_plan_values_are_checked_when_built():
    with pytest.raises(ValueError, match="negative index -1"):
        hfprune.PruningPlan(channels={STAGE0_INNER: [-1]})
    with pytest.raises(ValueError, match="channel 2 more than once"):
        hfprune.PruningPlan(channels={STAGE0_INNER: [2, 2]})
    with pytest.raises(ValueError, match="must hold integers"):
        hfprune.PruningPlan(channels={STAGE0_INNER: [1.5]})
    with pytest.raises(ValueError, match="group key 3"):
        hfprune.PruningPlan(channels={3: [1]})
    plan = hfprune.PruningPlan(channels={STAGE0_INNER: [3, 1]}, meta={"criterion": "l1"})
    assert hfprune.PruningPlan.from_json(plan.to_json()) == plan and plan.channels[STAGE0_INNER] == [1, 3]


def test_grouped_conv_channels_must_go_in_whole_groups():
    model = make_cnn("regnet")
    state = _state(model)
    name = "regnet.encoder.stages.1.layers.0.layer.0.convolution"
    with pytest.raises(ValueError, match=r"whole groups; group 1 \(channels 4..7\) is only partly listed"):
        hfprune.prune(model, hfprune.PruningPlan(channels={name: [0, 1, 2, 3, 4]}))
    assert _unchanged(model, state)


def test_not_prunable_group_names_the_reason():
    model = make_cnn("convnext")
    with pytest.raises(ValueError, match="not prunable: a LayerNorm"):
        hfprune.prune(model, hfprune.PruningPlan(channels={"convnext.embeddings.patch_embeddings": [0]}))


def test_transformer_units_on_a_cnn_and_channels_on_a_transformer():
    from transformers import BertConfig, BertForSequenceClassification

    cnn = make_cnn("resnet_basic")
    with pytest.raises(ValueError, match="is a CNN"):
        hfprune.prune(cnn, hfprune.PruningPlan(heads={0: [0]}))
    bert = BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1,
                                                    num_attention_heads=2, intermediate_size=16))
    with pytest.raises(ValueError, match="has no channel groups.*resnet"):
        hfprune.prune(bert, hfprune.PruningPlan(channels={"bert.encoder": [0]}))
    with pytest.raises(ValueError, match="has no channel groups"):
        hfprune.channel_groups(bert)


def test_unsupported_cnn_family_names_the_supported_ones():
    from transformers import MobileNetV1Config, MobileNetV1ForImageClassification

    model = MobileNetV1ForImageClassification(MobileNetV1Config(depth_multiplier=0.25, image_size=32))
    with pytest.raises(ValueError, match="mobilenet_v1.*Supported:.*efficientnet.*resnet"):
        hfprune.channel_groups(model)


def test_prune_refuses_while_channel_gates_are_attached():
    model = make_cnn("resnet_basic")
    plan = hfprune.PruningPlan(channels={STAGE0_INNER: [0]})
    with hfprune.masked(model, plan):
        with pytest.raises(ValueError, match="channel gates are still attached"):
            hfprune.prune(model, plan)
    hfprune.prune(model, plan)
    assert hfprune.channel_groups(model)[STAGE0_INNER].size == 7


def test_channel_importance_arguments():
    model = make_cnn("resnet_basic")
    with pytest.raises(ValueError, match="needs a seed"):
        hfprune.channel_importance(model, criterion="random")
    with pytest.raises(ValueError, match="needs data"):
        hfprune.channel_importance(model, criterion="taylor")
    with pytest.raises(ValueError, match="criterion for channels must be one of"):
        hfprune.channel_importance(model, criterion="michel")
    with pytest.raises(ValueError, match="no channel group 'nope'"):
        hfprune.channel_importance(model, groups=["nope"])
    inner = hfprune.channel_importance(model, groups="inner")
    assert inner and not any(inner.groups[n].coupled for n in inner)


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.5}, "ratio must be a number in"), ({"ratio": 0.5, "scope": "model"}, "scope must be one of"),
    ({"ratio": 0.5, "round_to": 0}, "round_to must be an integer"), ({}, "ratio= is required"),
])
def test_select_channels_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        hfprune.select_channels({"a": torch.ones(4)}, **kwargs)


def test_select_channels_global_layer_round_to_and_min():
    scores = {"a": torch.tensor([0.1, 0.2, 0.3, 0.4]), "b": torch.tensor([5.0, 6.0, 0.05, 7.0])}
    assert hfprune.select_channels(scores, ratio=0.5).channels == {"a": [0, 1, 2], "b": [2]}
    assert hfprune.select_channels(scores, ratio=0.5, scope="layer").channels == {"a": [0, 1], "b": [0, 2]}
    assert hfprune.select_channels(scores, ratio=1.0, min_per_group=2).channels == {"a": [0, 1], "b": [0, 2]}
    assert hfprune.select_channels(scores, ratio=0.5, round_to=2).channels == {"a": [0, 1]}


def test_network_slimming_refuses_a_model_without_batchnorm():
    model = make_cnn("convnext")
    state = _state(model)
    callback = NetworkSlimmingCallback(l1=1e-4)
    with pytest.raises(ValueError, match="ConvNextForImageClassification has no BatchNorm"):
        callback.on_train_begin(None, None, None, model=model)
    assert _unchanged(model, state)
    with pytest.raises(ValueError, match="targets must be one of"):
        NetworkSlimmingCallback(targets="some")
    with pytest.raises(TypeError, match="unknown option 'lambda_'"):
        NetworkSlimmingCallback(lambda_=1.0)


def test_network_slimming_adds_l1_sign_to_the_targeted_gamma_grads():
    model = make_cnn("resnet_bottleneck")
    callback = NetworkSlimmingCallback(l1=0.5, targets="inner")
    callback.on_train_begin(None, None, None, model=model)
    loss = model(**pixel_batch()).loss
    loss.backward()
    before = {id(p): p.grad.clone() for p in model.parameters()}
    callback.on_pre_optimizer_step(None, None, None, model=model)
    targeted = {id(m.weight) for m in callback.norms}
    # 4 bottleneck blocks x 2 inner BatchNorms + the stem's (free: stage 0 opens with a projection shortcut); the
    # stage-width (coupled) BatchNorms are not targeted.
    assert len(targeted) == 9
    for param in model.parameters():
        expected = before[id(param)] + 0.5 * torch.sign(param.detach()) if id(param) in targeted \
            else before[id(param)]
        assert torch.allclose(param.grad, expected)


def test_refresh_batchnorm_refreshes_only_the_running_statistics():
    model = make_cnn("resnet_bottleneck")
    name = "resnet.encoder.stages.0.layers.0.layer.0.convolution"
    hfprune.prune(model, hfprune.PruningPlan(channels={name: [0, 1]}))
    weights = {k: v.clone() for k, v in model.named_parameters()}
    momenta = [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    batch = pixel_batch(num=16)
    hfprune.refresh_batchnorm(model, [batch])
    assert not model.training and all(torch.equal(v, weights[k]) for k, v in model.named_parameters())
    assert [m.momentum for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)] == momenta
    # The stem's BatchNorm now holds exactly the batch statistics of its input.
    stem = model.resnet.embedder.embedder
    with torch.no_grad():
        h = stem.convolution(batch["pixel_values"])
    assert torch.allclose(stem.normalization.running_mean, h.mean((0, 2, 3)), atol=1e-4)
    with pytest.raises(ValueError, match="has no BatchNorm"):
        hfprune.refresh_batchnorm(make_cnn("convnext"), [batch])
    with pytest.raises(ValueError, match="yielded no batch"):
        hfprune.refresh_batchnorm(model, [])
    assert torch.allclose(stem.normalization.running_mean, h.mean((0, 2, 3)), atol=1e-4)  # restored on error


def test_pruning_callback_channel_options_are_checked_when_built():
    with pytest.raises(ValueError, match="channel_criterion must be one of"):
        hfprune.PruningCallback(channels_ratio=0.5, channel_criterion="michel")
    with pytest.raises(ValueError, match="channel_criterion='random' needs a seed"):
        hfprune.PruningCallback(channels_ratio=0.5, channel_criterion="random")
    with pytest.raises(ValueError, match="channel_groups must be one of"):
        hfprune.PruningCallback(channels_ratio=0.5, channel_groups="stem")
    with pytest.raises(ValueError, match="channels_ratio must be a number in"):
        hfprune.PruningCallback(channels_ratio=2.0)
    from hfprune.callbacks import NetworkSlimmingCallback as exported

    assert exported is NetworkSlimmingCallback
