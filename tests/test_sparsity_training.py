"""Masks during training, the gradual schedule and GradualPruningCallback (hfprune.sparsity)."""

from __future__ import annotations

import itertools

import pytest
import torch

from hfprune.sparsity import GradualPruningCallback, SparsitySchedule, sparsify
from tests.conftest import make_inputs, make_model


def _batch(model, seed):
    inputs = make_inputs(model, seed=seed)
    inputs["labels"] = torch.tensor([0, 2])
    return inputs


def test_pruned_weights_stay_zero_through_adamw():
    model = make_model("bert").train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.01)
    for step in range(3):  # Adam moments built up before pruning would move pruned weights back
        model(**_batch(model, step)).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    handle = sparsify(model, 0.8)
    before = {t.key: t.weight.detach().clone() for t in handle.targets}
    for step in range(20):
        model(**_batch(model, 10 + step)).loss.backward()
        for t in handle.targets:
            assert torch.all(t.weight.grad[~handle.masks[t.name]] == 0), t.key
        optimizer.step()
        optimizer.zero_grad()
    for t in handle.targets:
        w = t.weight.detach()
        assert torch.all(w[~handle.masks[t.name]] == 0), t.key
        assert not torch.equal(w, before[t.key])  # the kept weights did train
    assert abs(handle.sparsity() - 0.8) < 1e-3
    handle.finalize()
    assert not handle.active
    model(**_batch(model, 99)).loss.backward()
    optimizer.step()  # no hook any more: pruned weights may move again
    assert handle.sparsity() < 0.8


def test_frozen_targets_are_masked_too():
    model = make_model("bert").train()
    frozen = model.bert.encoder.layer[0].attention.self.query.weight
    frozen.requires_grad_(False)
    handle = sparsify(model, 0.5)
    assert int((frozen == 0).sum()) == frozen.numel() // 2
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model(**_batch(model, 0)).loss.backward()
    optimizer.step()
    assert abs(handle.sparsity() - 0.5) < 1e-3
    handle.finalize()


def test_second_handle_on_the_same_weights_is_refused():
    model = make_model("bert")
    handle = sparsify(model, 0.5)
    with pytest.raises(ValueError, match="already masked by an active SparsityHandle"):
        sparsify(model, 0.3)
    classifier = sparsify(model, 0.5, targets="classifier")  # other weights: fine
    handle.finalize()
    sparsify(model, 0.7).remove()  # after finalize: fine
    classifier.remove()


def test_update_keeps_pruned_weights_pruned():
    model = make_model("bert")
    handle = sparsify(model, 0.3)
    old = {k: m.clone() for k, m in handle.masks.items()}
    handle.update(0.6)
    for name, mask in handle.masks.items():
        assert torch.all(~mask[~old[name]])  # pruned before -> still pruned
    assert abs(handle.sparsity() - 0.6) < 1e-3
    handle.remove()


def test_cubic_schedule_matches_zhu_gupta():
    s = SparsitySchedule(final_sparsity=0.9, initial_sparsity=0.1, start_step=10, end_step=110, frequency=25)
    assert s.sparsity_at(0) == 0.0 and s.sparsity_at(10) == pytest.approx(0.1)
    assert s.sparsity_at(110) == 0.9 and s.sparsity_at(500) == 0.9
    assert s.sparsity_at(60) == pytest.approx(0.9 + (0.1 - 0.9) * 0.5**3)
    values = [s.sparsity_at(t) for t in range(10, 111)]
    assert all(a <= b for a, b in itertools.pairwise(values))
    assert [t for t in range(200) if s.is_update_step(t)] == [10, 35, 60, 85, 110]
    linear = SparsitySchedule(final_sparsity=0.8, start_step=0, end_step=100, kind="linear")
    assert linear.sparsity_at(25) == pytest.approx(0.2)
    once = SparsitySchedule(final_sparsity=0.5, start_step=7, kind="one-shot")
    assert once.sparsity_at(6) == 0.0 and once.sparsity_at(7) == 0.5
    assert [t for t in range(50) if once.is_update_step(t)] == [7]
    with pytest.raises(ValueError, match="end_step=5 is before start_step=10"):
        SparsitySchedule(final_sparsity=0.5, start_step=10, end_step=5)
    with pytest.raises(ValueError, match=r"final_sparsity=1.0 is outside \[0, 1\)"):
        SparsitySchedule(final_sparsity=1.0, end_step=5)


def test_callback_config_rejects_bad_input():
    with pytest.raises(ValueError, match="fixed sparsity; use schedule='one-shot'"):
        GradualPruningCallback(0.5, pattern="2:4")
    with pytest.raises(ValueError, match="schedule kind='exponential'"):
        GradualPruningCallback(0.5, schedule="exponential")
    with pytest.raises(ValueError, match="criterion='l0'"):
        GradualPruningCallback(0.5, criterion="l0")


class _Data(torch.utils.data.Dataset):
    def __init__(self, model, n=16):
        g = torch.Generator().manual_seed(0)
        self.ids = torch.randint(1, 99, (n, 6), generator=g)
        self.labels = torch.randint(0, 3, (n,), generator=g)

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.labels[i]}


def test_gradual_callback_reaches_final_sparsity_and_logs(tmp_path):
    from transformers import Trainer, TrainerCallback, TrainingArguments

    model = make_model("bert")
    callback = GradualPruningCallback(0.8, start_step=2, end_step=14, frequency=4)
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=18, per_device_train_batch_size=4,
                             learning_rate=1e-3, logging_steps=2, save_strategy="no", report_to=[],
                             disable_tqdm=True, use_cpu=True)
    seen = []

    class LogSpy(TrainerCallback):  # stands for a reporting integration registered before the user's callbacks
        def on_log(self, args, state, control, logs=None, **kwargs):
            seen.append(dict(logs))

    trainer = Trainer(model=model, args=args, train_dataset=_Data(model), callbacks=[LogSpy(), callback])
    assert callback.bind(trainer) is callback
    trainer.train()
    history = [h for h in trainer.state.log_history if "sparsity" in h]
    assert history and history[-1]["sparsity_target"] == pytest.approx(0.8)
    assert history[0]["sparsity"] < history[-1]["sparsity"]
    assert any("sparsity" in logs for logs in seen)
    assert trainer.callback_handler.callbacks[0] is callback  # reports before the printer/loggers see the logs
    handle = callback.handle
    assert not handle.active  # finalized on train end
    for t in handle.targets:
        assert abs(int((t.weight == 0).sum()) - 0.8 * t.weight.numel()) <= 1, t.key


def _taylor_masks(batches) -> dict[str, torch.Tensor]:
    model = make_model("bert")
    return {k: v.to(torch.uint8) for k, v in sparsify(model, 0.5, criterion="taylor", dataloader=batches).masks.items()}


def _taylor_worker(rank: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        model = make_model("bert")
        save_file(_taylor_masks([_batch(model, 40 + i) for i in range(4)][rank::2]),
                  os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip the slow interpreter teardown; the masks are on disk


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_taylor_masks_agree_across_processes(tmp_path):
    """Under DDP each process scores its own shard; the masks must be those of all shards, the same on every rank,
    or the replicas zero different weights and drift apart."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.spawn(_taylor_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    model = make_model("bert")
    single = _taylor_masks([_batch(model, 40 + i) for i in range(4)])
    for rank in range(2):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        differing = sum(int((got[k] != single[k]).sum()) for k in single)
        assert differing <= 4, (rank, differing)  # summation order may flip an exact tie, nothing more
