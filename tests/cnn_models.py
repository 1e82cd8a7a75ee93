"""Tiny random CNNs of every channel-pruning family, built in code and seeded (shared by the channel tests)."""

from __future__ import annotations

import random

import torch
import transformers

FAMILIES = ("resnet_basic", "resnet_bottleneck", "regnet", "mobilenet_v2", "efficientnet", "convnext")
NUM_LABELS = 5


def cnn_config(family: str, num_channels: int = 3):
    t = transformers
    common = {"num_channels": num_channels, "num_labels": NUM_LABELS}
    if family == "resnet_basic":
        return t.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24], depths=[2, 1, 2], layer_type="basic",
                              **common), t.ResNetForImageClassification
    if family == "resnet_bottleneck":
        return t.ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[2, 2], layer_type="bottleneck",
                              **common), t.ResNetForImageClassification
    if family == "regnet":
        return t.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[2, 2], groups_width=4, layer_type="y",
                              **common), t.RegNetForImageClassification
    if family == "mobilenet_v2":
        return t.MobileNetV2Config(image_size=32, depth_multiplier=0.25, **common), \
            t.MobileNetV2ForImageClassification
    if family == "efficientnet":
        # hidden_dim must equal the top conv's width, round_filters(1280) at this width coefficient.
        return t.EfficientNetConfig(image_size=32, width_coefficient=0.25, depth_coefficient=0.3, hidden_dim=320,
                                    **common), t.EfficientNetForImageClassification
    if family == "convnext":
        # layer_scale 1.0 (not 1e-6) so that each block's inner channels visibly change the logits.
        return t.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, layer_scale_init_value=1.0,
                                **common), t.ConvNextForImageClassification
    raise KeyError(family)


def make_cnn(family: str, seed: int = 0, num_channels: int = 3):
    """An eval-mode model with random BatchNorm statistics and scales (fresh ones are the identity) and He-scaled
    convolutions (EfficientNet's own init, std 0.02, leaves the activations nearly input-independent)."""
    torch.manual_seed(seed)
    config, cls = cnn_config(family, num_channels)
    model = cls(config).eval()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.normal_(0, 0.5)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.normal_(1.0, 0.5)
                module.bias.normal_(0, 0.5)
    return model


def pixel_batch(num: int = 4, num_channels: int = 3, size: int = 32, seed: int = 1) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(num, num_channels, size, size, generator=g),
            "labels": torch.randint(0, NUM_LABELS, (num,), generator=g)}


def random_channel_plan(groups: dict, seed: int = 0, which: str = "all") -> dict[str, list[int]]:
    """Random removals in every prunable group (whole runs for grouped convs), never all of a group."""
    rng = random.Random(seed)
    plan = {}
    for name, group in groups.items():
        if not group.prunable or (which == "inner" and group.coupled) or (which == "coupled" and not group.coupled):
            continue
        units = group.size // group.granularity
        if units < 2:
            continue
        chosen = rng.sample(range(units), rng.randint(1, units - 1))
        plan[name] = [u * group.granularity + i for u in chosen for i in range(group.granularity)]
    return plan
