"""Two CPU processes (gloo) scoring half of the batches each give the single-process scores, also through a model
really wrapped in `DistributedDataParallel` (what `accelerate.prepare` returns on several processes); the MoE expert
criteria too."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import make_inputs, make_model
from moe_models import make_moe_model, token_batch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel

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
            out.update(_bert_scores(model, batches))
        else:  # the forward-only criteria (Minitron activations, block influence, angular distance)
            out["llama.act_heads"] = hfprune.head_importance(model, batches, criterion="activation",
                                                             normalize_layers=False, normalize_global=False,
                                                             show_progress=False)
            out["llama.act_neurons"] = torch.cat(hfprune.neuron_importance(model, batches, criterion="activation",
                                                                           show_progress=False))
            out["llama.bi"] = hfprune.layer_importance(model, batches, method="block_influence", show_progress=False)
            out["llama.angular"] = hfprune.layer_importance(model, batches, method="angular", n=2,
                                                            show_progress=False)
    out.update(_expert_scores(batches_for))
    return {k: v.contiguous() for k, v in out.items()}


def _expert_scores(batches_for) -> dict[str, torch.Tensor]:
    """The expert criteria (issue 21): sums of routed counts, gates and REAP terms, then one division."""
    model = make_moe_model("qwen2_moe")
    batches = [token_batch(30 + i, batch=2 + i % 2, seq=7) for i in range(4)]
    for i, batch in enumerate(batches):
        batch["attention_mask"][0, :i] = 0  # unequal padding per process
    out = {}
    for criterion in ("reap", "frequency", "router_weight"):
        for layer, scores in hfprune.expert_importance(model, batches_for(batches), criterion=criterion).items():
            out[f"moe.{criterion}.{layer}"] = scores
    return out


PLAN = hfprune.PruningPlan(heads={0: [1, 3]}, neurons={1: list(range(8))}, layers=[2])


def _bert_scores(model, batches) -> dict[str, torch.Tensor]:
    """Scores, masks and masked logits; `model` may be the DDP wrapper (then the names get no "module." prefix)."""
    out = {"bert.michel": hfprune.head_importance(model, batches, show_progress=False),
           "bert.taylor": torch.cat(hfprune.neuron_importance(model, batches, show_progress=False)),
           "bert.layer_gate": hfprune.layer_importance(model, batches, method="gate", show_progress=False),
           "bert.ablation": hfprune.layer_importance(model, batches, show_progress=False)}
    with hfprune.masked(model, PLAN), torch.no_grad():  # hooks on the inner modules act on the wrapper's forward
        out["bert.masked_logits"] = model(**make_inputs(hfprune.arch.unwrap_model(model), seed=99)).logits
    handle = hfprune.sparsify(model, 0.5, criterion="magnitude", targets=["default", "classifier"])
    out.update({f"bert.mask.{name}": mask.float() for name, mask in handle.masks.items()})
    handle.remove()
    return out


def _ddp_scores(batches_for) -> dict[str, torch.Tensor]:
    model = make_model("bert")
    ddp = DistributedDataParallel(model)  # CPU + gloo: a real wrapper, with its reducer and buffer broadcast
    assert not hasattr(ddp, "config")
    out = _bert_scores(ddp, batches_for(_batches(model)))
    assert hfprune.prune(ddp, PLAN) is model and model.config.num_hidden_layers == 2  # the inner model is pruned
    return {f"ddp.{k}": v.contiguous() for k, v in out.items()}


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        shard = lambda batches: batches[rank::WORLD]  # noqa: E731
        scores = {**_scores(shard), **_ddp_scores(shard)}
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
        wrapped = {k.removeprefix("ddp.") for k in got if k.startswith("ddp.")}
        assert set(got) - {f"ddp.{k}" for k in wrapped} == set(single)
        assert {"bert.michel", "bert.taylor", "bert.layer_gate", "bert.ablation", "bert.masked_logits"} <= wrapped
        assert sum(k.startswith("bert.mask.") for k in wrapped) == 19  # 6 projections x 3 layers + classifier
        for key, value in got.items():
            expected = single[key.removeprefix("ddp.")]  # the wrapped model's result is the unwrapped one's
            # Relative to the largest score: raw scores of tiny random models are ~1e-6.
            scale = expected.double().abs().nan_to_num().max().clamp_min(1e-30)
            assert torch.allclose(value.double() / scale, expected.double() / scale, atol=1e-5, rtol=0,
                                  equal_nan=True), (rank, key)
    assert single["bert.raw"].abs().sum() > 0


def test_wrappers_are_unwrapped_in_one_process():
    # torch.compile keeps the model in `_orig_mod`, DataParallel (and DDP, above) in `.module`; neither has `.config`.
    model = make_model("bert")
    wrapped = torch.nn.DataParallel(torch.compile(model))  # nothing compiles until it is called
    assert hfprune.arch.unwrap_model(wrapped) is model and hfprune.get_adapter(wrapped) is hfprune.get_adapter(model)
    assert torch.equal(hfprune.head_importance(wrapped, criterion="magnitude"),
                       hfprune.head_importance(model, criterion="magnitude"))
    gates = hfprune.mask(wrapped, PLAN)
    assert set(gates.layer_gates) == {0, 1, 2} and float(gates.layer_gates[2]) == 0.0
    gates.remove()
    assert hfprune.sparsify(wrapped, 0.5).keys()[0].startswith("bert.")  # the model's names, no "module." prefix
