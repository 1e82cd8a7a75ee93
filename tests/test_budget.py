"""prune_to_budget (Kwon et al., 2022): budget met, tuning helps, masked-with-scales == pruned == reloaded."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import FAMILIES, make_inputs, make_model

import hfprune
from hfprune.budget import apply_budget_masks, find_budget_masks, mask_with_scales
from hfprune.flops import model_costs

DECODERS = ("gpt2", "llama", "mistral", "qwen2", "qwen3")


def _batches(model, n: int = 6, batch: int = 4, seq: int = 9) -> list[dict]:
    out = []
    for i in range(n):
        inputs = make_inputs(model, batch=batch, seq=seq, seed=30 + i)
        if model.config.model_type not in DECODERS:  # decoders get labels = input_ids from prune_to_budget
            inputs["labels"] = torch.arange(batch) % 3
        out.append(inputs)
    return out


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_unchanged(model, before: dict[str, torch.Tensor]) -> None:
    after = model.state_dict()
    assert set(after) == set(before)
    assert all(torch.equal(after[k], v) for k, v in before.items())
    assert not any(m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("name", ["bert", "llama"])
@pytest.mark.parametrize("metric,fraction", [("flops", 0.6), ("flops", 0.5), ("params", 0.7)])
def test_budget_is_met_and_close(name, metric, fraction):
    model = make_model(name)
    dense = model_costs(model, seq_len=16)
    plan = hfprune.prune_to_budget(model, _batches(model), **{metric: fraction}, seq_len=16, show_progress=False)
    after = model_costs(model, seq_len=16)
    achieved = after[metric] / dense[metric]
    assert achieved <= fraction + 1e-12
    # Within about one head + one neuron of the target (tiny model: a head is ~2% of the FLOPs).
    assert achieved >= fraction - 0.04, achieved
    assert plan.meta["achieved"][metric] == pytest.approx(achieved)
    assert plan.meta["budget"] == {metric: fraction}
    assert set(plan.meta["time_s"]) >= {"fisher", "search", "rearrange", "tune", "prune", "total"}
    structure = hfprune.model_structure(model)
    assert min(structure["heads"]) >= 1 and min(structure["ffn"]) >= 1
    assert plan.num_heads() + plan.num_neurons() > 0


@pytest.mark.parametrize("name", FAMILIES)
def test_masked_with_scales_equals_pruned_with_folded_scales(name):
    model = make_model(name)
    masks = find_budget_masks(model, _batches(model), flops=0.6, seq_len=16, show_progress=False)
    assert masks.head_scales and masks.neuron_scales  # tuning ran
    assert any((s - 1).abs().max() > 1e-3 for s in masks.neuron_scales.values())  # and changed something
    inputs = make_inputs(model, batch=3, seq=8, seed=99)
    with torch.no_grad():
        gates = mask_with_scales(model, masks)
        try:
            masked = model(**inputs).logits
        finally:
            gates.remove()
        apply_budget_masks(model, masks)
        pruned = model(**inputs).logits
    scale = masked.abs().max().clamp_min(1.0)
    assert torch.allclose(masked / scale, pruned / scale, atol=1e-5), (masked - pruned).abs().max()


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_pruned_model_saves_and_reloads(name, tmp_path):
    model = make_model(name)
    hfprune.prune_to_budget(model, _batches(model), flops=0.5, seq_len=16, show_progress=False)
    hfprune.save_pruned(model, tmp_path / "out")
    reloaded = hfprune.load_pruned(tmp_path / "out").eval()
    inputs = make_inputs(model, batch=2, seq=8, seed=5)
    with torch.no_grad():
        assert torch.allclose(model(**inputs).logits, reloaded(**inputs).logits, atol=1e-6)
    assert hfprune.model_structure(reloaded) == hfprune.model_structure(model)


def _layer_errors(model, dense, batches) -> list[float]:
    errors = None
    with torch.no_grad():
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            got = model(**inputs, output_hidden_states=True).hidden_states[1:]
            want = dense(**inputs, output_hidden_states=True).hidden_states[1:]
            mask = inputs["attention_mask"].bool()
            terms = [float((g - w)[mask].pow(2).sum()) for g, w in zip(got, want)]
            errors = terms if errors is None else [a + b for a, b in zip(errors, terms)]
    return errors


@pytest.mark.parametrize("name", ["bert", "llama"])
def test_tuning_lowers_the_layer_reconstruction_error(name):
    dense = make_model(name)
    batches = _batches(dense, n=8)
    tuned, plain = copy.deepcopy(dense), copy.deepcopy(dense)
    plan_t = hfprune.prune_to_budget(tuned, batches, flops=0.5, seq_len=16, show_progress=False)
    plan_p = hfprune.prune_to_budget(plain, batches, flops=0.5, seq_len=16, tune=False, show_progress=False)
    assert plan_t.heads == plan_p.heads and plan_t.neurons == plan_p.neurons  # same mask, only the scales differ
    err_t, err_p = _layer_errors(tuned, dense, batches), _layer_errors(plain, dense, batches)
    assert err_t[0] < err_p[0]  # the first layer's output is what its least squares minimises
    assert sum(err_t) < sum(err_p)


def test_rearrangement_uses_the_block_fisher():
    from hfprune.budget import rearrange_layer

    # Per-batch gradients [batches, units]. By the diagonal, unit 2 is the most important (keep it, remove 0 and 1),
    # but 0 and 1 point the same way, so removing both together costs ||g0 + g1||^2 = 9.7, while 1 and 2 cancel:
    # removing them costs 0.02. The block Fisher sees it; the count of kept units stays 1.
    g = torch.tensor([[1.0, 1.2, -1.3], [1.0, 1.2, -1.3]])
    assert rearrange_layer([2], g) == [0]
    # With uncorrelated gradients there is nothing to gain: the diagonal's choice stays.
    g = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0]])
    assert rearrange_layer([2], g) == [2]
    assert rearrange_layer([1, 2], g) == [1, 2]


def test_latency_budget_reads_the_table():
    from hfprune.budget import LatencyTable, find_budget_masks

    model = make_model("bert")
    # A synthetic table (timings on a shared machine are too noisy for a test): a block costs 1 + 0.5 per head and
    # 0.05 per neuron, the model 3 blocks + 2.
    table = LatencyTable(heads=[1 + 0.5 * h + 0.05 * 48 for h in range(1, 5)], neuron_counts=[12, 24, 36, 48],
                         neurons=[1 + 2.0 + 0.05 * n for n in (12, 24, 36, 48)], model=3 * 5.4 + 2,
                         batch_shape=(8, 16))
    masks = find_budget_masks(model, _batches(model), latency=0.7, seq_len=16, show_progress=False,
                              latency_table=table)
    kept_h = [len(k) for k in masks.kept_heads]
    kept_n = [len(k) for k in masks.kept_neurons]
    estimate = table.model - sum(5.4 - (1 + 0.5 * h + 0.05 * n) for h, n in zip(kept_h, kept_n))
    assert estimate / table.model <= 0.7 + 1e-9
    assert estimate / table.model >= 0.7 - 0.5 / table.model  # within one head's time of the target
    assert masks.plan.meta["estimated"]["latency"] == pytest.approx(estimate / table.model)
    plan = apply_budget_masks(model, masks)
    assert plan.meta["achieved"]["latency"] == pytest.approx(estimate / table.model)


def test_latency_table_is_timed_on_copies():
    from hfprune.budget import build_latency_table

    model = make_model("bert")
    before = _state(model)
    table = build_latency_table(model, _batches(model)[0], seq_len=16, repeats=1, neuron_points=3)
    assert len(table.heads) == 4 and table.neuron_counts == [16, 32, 48]
    assert all(t > 0 for t in [*table.heads, *table.neurons, table.model])
    assert table.batch_shape == (4, 16)
    _assert_unchanged(model, before)


def test_budget_of_one_keeps_everything():
    model = make_model("bert")
    before = _state(model)
    plan = hfprune.prune_to_budget(model, _batches(model), flops=1.0, seq_len=16, show_progress=False)
    assert plan.is_empty()
    _assert_unchanged(model, before)


@pytest.mark.parametrize("kwargs,match", [
    ({}, "exactly one budget"),
    ({"flops": 0.5, "params": 0.5}, "exactly one budget"),
    ({"flops": 0.0}, r"\(0, 1\]"),
    ({"flops": 1.5}, r"\(0, 1\]"),
    ({"params": -0.2}, r"\(0, 1\]"),
    ({"latency": math.nan}, r"\(0, 1\]"),
    ({"flops": True}, r"\(0, 1\]"),
    ({"flops": "0.5"}, r"\(0, 1\]"),
    ({"flops": 0.02}, "at least one head and one FFN neuron per layer"),
    ({"params": 0.05}, "at least one head and one FFN neuron per layer"),
    ({"flops": 0.5, "seq_len": 0}, "seq_len"),
    ({"flops": 0.5, "num_samples": -1}, "num_samples"),
])
def test_bad_input_is_refused_and_nothing_changes(kwargs, match):
    model = make_model("bert")
    before = _state(model)
    config = model.config.to_dict()
    with pytest.raises(ValueError, match=match):
        hfprune.prune_to_budget(model, _batches(model), **kwargs, show_progress=False)
    _assert_unchanged(model, before)
    assert model.config.to_dict() == config


def test_batches_without_labels_are_refused():
    model = make_model("bert")
    before = _state(model)
    batches = [make_inputs(model, batch=2, seq=7, seed=i) for i in range(2)]
    with pytest.raises(ValueError, match="labels"):
        hfprune.prune_to_budget(model, batches, flops=0.6, show_progress=False)
    _assert_unchanged(model, before)


def test_attached_gates_are_refused():
    model = make_model("bert")
    handle = hfprune.mask(model, hfprune.PruningPlan(heads={0: [1]}))
    try:
        with pytest.raises(ValueError, match="gates attached"):
            hfprune.prune_to_budget(model, _batches(model), flops=0.6, show_progress=False)
    finally:
        handle.remove()


def test_decoder_batches_use_the_causal_lm_loss():
    from hfprune.passes import prepare_batches

    model = make_model("llama")
    batch = make_inputs(model, batch=2, seq=7, seed=3)
    (got,) = prepare_batches(model, [batch], num_samples=None)
    expected = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    assert torch.equal(got["labels"], expected)


# ----- torch.distributed: 2 gloo processes, batches split, give the single-process plan -----------------------------
WORLD = 2


def _distributed_run(batches_for) -> dict[str, torch.Tensor]:
    out = {}
    for name in ("bert", "llama"):
        model = make_model(name)
        batches = batches_for(_batches(model, n=6, batch=3))
        plan = hfprune.prune_to_budget(model, batches, flops=0.55, seq_len=16, show_progress=False)
        out[f"{name}.plan"] = torch.tensor([float(ord(c)) for c in plan.to_json().split(', "meta"')[0]])
        out.update({f"{name}.{k}": v.contiguous() for k, v in model.state_dict().items()})
    return out


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    import os

    import torch.distributed as dist
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    try:
        save_file(_distributed_run(lambda batches: batches[rank::WORLD]), os.path.join(out_dir, f"rank{rank}.st"))
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip the interpreter teardown; the results are on disk


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")
def test_two_gloo_processes_find_the_single_process_plan(tmp_path):
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    mp.spawn(_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD, join=True)
    single = _distributed_run(lambda batches: batches)
    for rank in range(WORLD):
        got = load_file(str(tmp_path / f"rank{rank}.st"))
        assert set(got) == set(single)
        for key, expected in single.items():
            if key.endswith(".plan"):
                assert torch.equal(got[key], expected), (rank, key)  # the same units removed
            else:  # the same folded scales, to rounding (sums taken in a different order)
                assert torch.allclose(got[key], expected, atol=1e-5, rtol=1e-4), (rank, key)


def test_tuning_stops_at_a_scale_outside_the_bound(monkeypatch):
    from hfprune.budget import tuning

    model = make_model("bert")
    calls = []
    real = tuning._solve

    def solve(ata, atb):  # the second system (layer 0's neurons) "needs" a scale of 50
        calls.append(1)
        scales = real(ata, atb)
        return None if len(calls) == 2 else scales

    monkeypatch.setattr(tuning, "_solve", solve)
    masks = find_budget_masks(model, _batches(model), flops=0.6, seq_len=16, show_progress=False)
    assert masks.plan.meta["tuning"] == {"layers_tuned": 0, "stopped_at": {"layer": 0, "units": "neurons"}}
    assert list(masks.head_scales) == [0] and masks.neuron_scales == {}
    assert len(calls) == 2
    big = torch.tensor([[1.0]], dtype=torch.float64)
    assert real(big, torch.tensor([50.0], dtype=torch.float64)) is None  # outside [-10, 10]
    assert real(big, torch.tensor([9.0], dtype=torch.float64)).item() == pytest.approx(9.0)


def test_a_wrapped_model_is_unwrapped():
    model = make_model("bert")
    wrapped = torch.nn.DataParallel(model)  # the model in `.module`, as DDP / accelerate keep it
    plan = hfprune.prune_to_budget(wrapped, _batches(model), flops=0.6, seq_len=16, show_progress=False)
    assert plan.meta["achieved"]["flops"] <= 0.6
    assert hfprune.model_structure(model)["heads"] != [4, 4, 4]


def _last_cls_error(model, dense, batches) -> float:
    with torch.no_grad():
        total = 0.0
        for batch in batches:
            inputs = {k: v for k, v in batch.items() if k != "labels"}
            got = model(**inputs, output_hidden_states=True).hidden_states[-1][:, 0]
            want = dense(**inputs, output_hidden_states=True).hidden_states[-1][:, 0]
            total += float((got - want).pow(2).sum())
    return total


def test_first_token_classifier_fits_the_last_layer_on_cls(monkeypatch):
    # BertForSequenceClassification reads position 0 only: the last layer's neurons are fitted on [CLS] rows, so the
    # [CLS] output is closer to the dense model's than with the all-token fit (same mask, same head scales).
    dense = make_model("bert")
    assert type(dense).__name__ == "BertForSequenceClassification"
    batches = _batches(dense, n=8)
    cls_fit, all_fit = copy.deepcopy(dense), copy.deepcopy(dense)
    masks_cls = find_budget_masks(cls_fit, batches, flops=0.5, seq_len=16, show_progress=False)
    from hfprune.arch.bert import BertAdapter

    monkeypatch.setattr(BertAdapter, "first_token_heads", ())
    masks_all = find_budget_masks(all_fit, batches, flops=0.5, seq_len=16, show_progress=False)
    last = dense.config.num_hidden_layers - 1
    assert masks_cls.plan.heads == masks_all.plan.heads and masks_cls.plan.neurons == masks_all.plan.neurons
    assert torch.allclose(masks_cls.head_scales[last], masks_all.head_scales[last])
    assert not torch.allclose(masks_cls.neuron_scales[last], masks_all.neuron_scales[last])
    apply_budget_masks(cls_fit, masks_cls)
    apply_budget_masks(all_fit, masks_all)
    assert _last_cls_error(cls_fit, dense, batches) < _last_cls_error(all_fit, dense, batches)


def test_only_first_token_heads_read_position_zero():
    from hfprune.arch import get_adapter

    assert get_adapter(make_model("bert")).reads_first_token_only(make_model("bert"))
    llama = make_model("llama")
    assert not get_adapter(llama).reads_first_token_only(llama)  # a causal LM's loss reads every position
