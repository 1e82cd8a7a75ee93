"""FLOPs come from one counter (FlopCounterMode over a meta copy): hand counts, attention kinds, no side effects."""

from __future__ import annotations

import torch
from conftest import make_inputs, make_model
from torch.utils.flop_counter import FlopCounterMode

import hfprune
from hfprune.flops import count_flops, model_costs


def test_counts_attention_products_for_eager_and_sdpa_alike():
    d, f, s, h, hd = 32, 48, 10, 4, 8  # the tiny BERT of conftest
    per_block = 2 * s * (4 * d * d + 2 * d * f) + 2 * 2 * s * s * h * hd  # projections + q k^T and (softmax) v
    eager = make_model("bert")
    sdpa = make_model("bert")
    sdpa.set_attn_implementation("sdpa")
    for model in (eager, sdpa):
        total, per_layer = count_flops(model, seq_len=s)
        assert per_layer == [per_block] * 3
        assert total == 3 * per_block + 2 * d * d + 2 * d * 3  # + pooler and classifier on the [CLS] token


def test_equals_flopcountermode_on_the_real_model_and_leaves_it_untouched():
    model = make_model("llama")  # eager attention: on CPU every product is a counted matmul
    before = {k: v.clone() for k, v in model.state_dict().items()}
    inputs = make_inputs(model, batch=1, seq=9)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(input_ids=inputs["input_ids"])
    assert count_flops(model, seq_len=9)[0] == counter.get_total_flops()
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.device.type == "cpu" and p.grad is None for p in model.parameters())


def test_pruning_lowers_the_count_of_its_layer_only():
    model = make_model("gpt2")
    dense = model_costs(model, 12)["per_layer"]
    hfprune.prune(model, hfprune.PruningPlan(heads={1: [0, 1]}))
    pruned = model_costs(model, 12)["per_layer"]
    assert pruned[0]["flops"] == dense[0]["flops"] and pruned[2]["flops"] == dense[2]["flops"]
    assert pruned[1]["flops"] < dense[1]["flops"] and pruned[1]["heads"] == 2


def test_headless_and_ffn_less_layers_count_what_is_left():
    d, f, s = 32, 48, 12
    model = make_model("bert")
    hfprune.prune(model, hfprune.PruningPlan(heads={0: [0, 1, 2, 3]}, neurons={1: list(range(48))}))
    per_layer = [c["flops"] for c in model_costs(model, s)["per_layer"]]
    attention = 2 * s * 4 * d * d + 2 * 2 * s * s * 4 * 8
    assert per_layer == [2 * s * 2 * d * f, attention, attention + 2 * s * 2 * d * f]
