"""Channel pruning during training on real digits (scikit-learn's 8x8 `load_digits`): Network Slimming and
`PruningCallback(channels_ratio=)`."""

from __future__ import annotations

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification, Trainer, TrainingArguments

import hfprune


class _Digits(torch.utils.data.Dataset):
    def __init__(self, n: int = 256):
        from sklearn.datasets import load_digits

        digits = load_digits()
        self.x = torch.tensor(digits.images[:n], dtype=torch.float32).unsqueeze(1) / 16.0
        self.y = torch.tensor(digits.target[:n])

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"pixel_values": self.x[i], "labels": self.y[i]}


def _model():
    torch.manual_seed(0)
    return ResNetForImageClassification(ResNetConfig(num_channels=1, embedding_size=8, hidden_sizes=[16, 32],
                                                     depths=[1, 1], layer_type="basic", num_labels=10,
                                                     downsample_in_first_stage=False))


def _args(tmp_path, steps=8):
    return TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=steps, per_device_train_batch_size=32,
                             learning_rate=1e-2, logging_steps=4, report_to=[], save_strategy="no",
                             use_cpu=True, disable_tqdm=True, seed=0)


def test_network_slimming_shrinks_the_penalised_gammas(tmp_path):
    data = _Digits()
    runs = {}
    for l1 in (0.0, 0.05):
        model = _model()
        callback = hfprune.NetworkSlimmingCallback(l1=l1, targets="inner")
        Trainer(model, _args(tmp_path), train_dataset=data, callbacks=[callback]).train()
        runs[l1] = torch.cat([m.weight.detach().abs() for m in callback.norms]).mean()
        assert callback.history and 0.0 <= callback.history[-1][1] <= 1.0
    assert runs[0.05] < runs[0.0]


@pytest.mark.parametrize("mode", ["mask", "prune"])
def test_pruning_callback_channels_ratio_ends_pruned_and_reloads(tmp_path, mode):
    data = _Digits()
    model = _model()
    before = sum(p.numel() for p in model.parameters())
    inner = sum(g.size for g in hfprune.channel_groups(model).values() if g.prunable and not g.coupled)
    callback = hfprune.PruningCallback(channels_ratio=0.5, channel_criterion="bn_scale", channel_groups="inner",
                                       at_step=4, mode=mode)
    trainer = Trainer(model, _args(tmp_path), train_dataset=data, callbacks=[callback])
    trainer.train()
    assert callback.pruned and callback.plan.num_channels() == inner // 2 == 28  # stem 8 + inner 16 + 32
    assert sum(p.numel() for p in model.parameters()) < before
    trainer.save_model(str(tmp_path / "pruned"))
    loaded = hfprune.load_pruned(tmp_path / "pruned")
    batch = torch.stack([data[i]["pixel_values"] for i in range(8)])
    model.eval()
    with torch.no_grad():
        assert (loaded(pixel_values=batch).logits - model(pixel_values=batch).logits).abs().max() <= 1e-4
