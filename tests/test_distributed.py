"""Two CPU processes (gloo) scoring half of the batches each give the single-process scores."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_inputs, make_model
from safetensors.torch import load_file, save_file

import hfprune

WORLD = 2


def _batches(model, n: int = 4) -> list[dict]:
    out = []
    for i in range(n):
        inputs = make_inputs(model, batch=2 + i % 2, seq=7, seed=20 + i)  # unequal sizes and padding per process
        if model.config.model_type == "llama":
            inputs["labels"] = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, -100)
        else:
            inputs["labels"] = torch.arange(inputs["input_ids"].shape[0]) % 3
        out.append(inputs)
    return out


def _scores(batches_for) -> dict[str, torch.Tensor]:
    out = {}
    for family in ("bert", "llama"):
        model = make_model(family)
        batches = batches_for(_batches(model))
        result = hfprune.head_importance(model, batches, normalize_layers=False, normalize_global=False,
                                         return_entropy=True, show_progress=False)
        out[f"{family}.raw"], out[f"{family}.entropy"] = result.scores, result.entropy
        out[f"{family}.tokens"] = torch.tensor([float(result.num_tokens)])
        if family == "bert":
            out["bert.taylor"] = torch.cat(hfprune.neuron_importance(model, batches, show_progress=False))
            out["bert.layer_gate"] = hfprune.layer_importance(model, batches, method="gate", show_progress=False)
        else:  # the forward-only criteria (Minitron activations, block influence, angular distance)
            out["llama.act_heads"] = hfprune.head_importance(model, batches, criterion="activation",
                                                             normalize_layers=False, normalize_global=False,
                                                             show_progress=False)
            out["llama.act_neurons"] = torch.cat(hfprune.neuron_importance(model, batches, criterion="activation",
                                                                           show_progress=False))
            out["llama.bi"] = hfprune.layer_importance(model, batches, method="block_influence", show_progress=False)
            out["llama.angular"] = hfprune.layer_importance(model, batches, method="angular", n=2,
                                                            show_progress=False)
    return {k: v.contiguous() for k, v in out.items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        scores = _scores(lambda batches: batches[rank::WORLD])
        save_file(scores, os.path.join(out_dir, f"rank{rank}.safetensors"))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip the interpreter teardown (seconds, with torch and transformers loaded); results are on disk


@pytest.mark.skipif(not dist.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_match_one_process(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = _scores(lambda batches: batches)
    for rank in range(WORLD):
        got = load_file(str(tmp_path / f"rank{rank}.safetensors"))
        assert set(got) == set(single)
        for key, expected in single.items():
            # Relative to the largest score: raw scores of tiny random models are ~1e-6.
            scale = expected.double().abs().nan_to_num().max().clamp_min(1e-30)
            assert torch.allclose(got[key].double() / scale, expected.double() / scale, atol=1e-5, rtol=0,
                                  equal_nan=True), (rank, key)
    assert single["bert.raw"].abs().sum() > 0
