"""Reference material for MoE expert pruning (issue 21), checked on tiny models of qwen3_moe, qwen2_moe, mixtral, olmoe.

1. The gate position: a removed expert's router logit forced to -inf before softmax / top-k gives the logits of the
   model with that expert sliced out of the fused tensors and the router (`masked == pruned`), whatever the plan;
   a uniform plan is a plain config that reloads with `from_pretrained`.
2. The saliency reference of `tests/moe_reference.py` (REAP, frequency, router weight) is the model's own routing:
   the gate values times the experts' outputs rebuild the MoE output, and the scores behave as their definitions say.
"""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from moe_models import (
    FAMILIES,
    NUM_EXPERTS,
    TOP_K,
    count_key,
    make_moe_model,
    masked_experts,
    moe_blocks,
    prune_by_hand,
    random_plan,
    renormalises,
    token_batch,
)
from moe_reference import KEYS, expert_output, reference_scores, routing_records

IMPLEMENTATIONS = ("eager", "grouped_mm")


def _logits(model, batch, **kwargs):
    with torch.no_grad():
        return model(**batch, **kwargs)


@pytest.mark.parametrize("impl", IMPLEMENTATIONS)
@pytest.mark.parametrize("family", FAMILIES)
def test_masked_equals_pruned_by_hand(family, impl):
    model = make_moe_model(family, experts_implementation=impl)
    batch = token_batch(seed=3)
    base = _logits(model, batch).logits
    for seed in range(3):
        plan = random_plan(model, seed=10 + seed)
        assert all(plan.values()) and len(plan) == len(moe_blocks(model))
        with masked_experts(model, plan):
            masked = _logits(model, batch).logits
        pruned = prune_by_hand(model, plan, family)
        assert {i: b.gate.weight.shape[0] for i, b in moe_blocks(pruned).items()} == \
            {i: NUM_EXPERTS - len(plan[i]) for i in plan}
        assert (masked - base).abs().max() > 1e-2  # the experts matter: equality below is not trivial
        assert torch.allclose(_logits(pruned, batch).logits, masked, atol=1e-5, rtol=0)
    with masked_experts(model, {}):  # the hook itself reproduces the family's router exactly
        assert torch.equal(_logits(model, batch).logits, base)


@pytest.mark.parametrize("family", FAMILIES)
def test_uniform_plan_is_a_plain_config(family, tmp_path):
    model = make_moe_model(family)
    plan = random_plan(model, seed=5, uniform=True)
    removed = len(next(iter(plan.values())))
    batch = token_batch(seed=4)
    with masked_experts(model, plan):
        masked = _logits(model, batch).logits
    pruned = prune_by_hand(model, plan, family)
    pruned.save_pretrained(tmp_path)
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    on_disk = json.loads((tmp_path / "config.json").read_text())
    assert on_disk[count_key(family)] == NUM_EXPERTS - removed
    assert on_disk["num_experts_per_tok"] == TOP_K
    assert torch.allclose(_logits(reloaded, batch).logits, masked, atol=1e-5, rtol=0)
    block = next(iter(moe_blocks(model).values()))
    inter, hidden = block.experts.down_proj.shape[2], block.experts.down_proj.shape[1]
    per_expert = 3 * inter * hidden + hidden  # gate, up, down rows + one router row
    assert model.num_parameters() - reloaded.num_parameters() == removed * per_expert * len(plan)


@pytest.mark.parametrize("family", FAMILIES)
def test_aux_loss_after_pruning(family):
    """transformers' load-balancing loss is N * sum_j (sum_l f_lj) (sum_l P_lj): per-expert statistics are added
    across layers by expert index before the product, over the config's N. With the same indices removed in every
    layer, the masked model's removed experts have f = P = 0 and only the factor N differs from the pruned model's.
    (Different indices per layer re-pair experts across layers after renumbering; per-layer counts break it.)"""
    model = make_moe_model(family)
    batch = token_batch(seed=6)
    removed = [1, 4, 6]
    plan = {layer: removed for layer in moe_blocks(model)}
    with masked_experts(model, plan):
        masked = _logits(model, batch, output_router_logits=True)
    assert all(torch.isinf(r[:, removed]).all() for r in masked.router_logits)
    pruned = _logits(prune_by_hand(model, plan, family), batch, output_router_logits=True)
    kept = NUM_EXPERTS - len(removed)
    assert torch.allclose(pruned.aux_loss, masked.aux_loss * kept / NUM_EXPERTS, rtol=1e-5, atol=0)
    uneven = prune_by_hand(model, random_plan(model, seed=8), family)
    assert len({b.gate.weight.shape[0] for b in moe_blocks(uneven).values()}) > 1
    with pytest.raises(RuntimeError):
        _logits(uneven, batch, output_router_logits=True)
    _logits(uneven, batch)  # without router logits the non-uniform model runs


@pytest.mark.parametrize("family", FAMILIES)
def test_gate_values_times_expert_outputs_rebuild_the_moe_output(family):
    """The reference's E_j and g_j are the model's: sum over the top-k of g_j(x) E_j(x) is the experts' output."""
    model = make_moe_model(family)
    outputs = {}
    handles = [b.experts.register_forward_hook(lambda m, a, o, i=i: outputs.__setitem__(i, o.detach()))
               for i, b in moe_blocks(model).items()]
    try:
        records = routing_records(model, [token_batch(seed=9)])
    finally:
        for h in handles:
            h.remove()
    for layer, block in moe_blocks(model).items():
        rec = records[layer][0]
        rebuilt = torch.zeros_like(rec["x"])
        with torch.no_grad():
            for t in range(rec["x"].shape[0]):
                for slot in range(TOP_K):
                    j = int(rec["indices"][t, slot])
                    rebuilt[t] += rec["weights"][t, slot] * expert_output(block, j, rec["x"][t:t + 1])[0]
        assert outputs[layer].abs().max() > 0.1
        assert torch.allclose(rebuilt, outputs[layer], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_frequency_and_router_weight_sums(family):
    model = make_moe_model(family)
    batches = [token_batch(seed=s) for s in range(2)]
    scores = reference_scores(model, batches)
    records = routing_records(model, batches)
    for layer, s in scores.items():
        assert s["frequency"].sum().item() == pytest.approx(TOP_K, abs=1e-12)
        assert (s["routed"] > 0).sum() >= TOP_K and set(s) >= set(KEYS)
        # router_weight sums to the mean over tokens of the summed top-k gate: 1 when renormalised, below 1 if not.
        logits = torch.cat([r["logits"] for r in records[layer]]).double()
        topk_mass = torch.topk(logits.softmax(-1), TOP_K, dim=-1).values.sum(-1).mean().item()
        expected = 1.0 if renormalises(model) else topk_mass
        assert s["router_weight"].sum().item() == pytest.approx(expected, abs=1e-6)
        assert topk_mass < 0.999


@pytest.mark.parametrize("family", FAMILIES)
def test_reap_scales_with_the_expert_output(family):
    """Doubling expert j's down projection in the last MoE layer doubles its REAP and EAN and nothing else."""
    model = make_moe_model(family)
    batches = [token_batch(seed=11)]
    before = reference_scores(model, batches)
    last = max(moe_blocks(model))
    j = int(before[last]["routed"].argmax())
    with torch.no_grad():
        moe_blocks(model)[last].experts.down_proj[j] *= 2
    after = reference_scores(model, batches)
    for layer in before:
        for key in KEYS:
            expected = before[layer][key].clone()
            if layer == last and key in ("reap", "ean"):
                expected[j] *= 2
            assert torch.allclose(after[layer][key], expected, rtol=1e-5, atol=1e-9), (layer, key)
    assert before[last]["reap"][j] > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_padding_is_not_counted(family):
    """Two sequences right-padded into one batch score the same as each run alone (pad positions are routed by
    the model, but are no calibration tokens)."""
    model = make_moe_model(family)
    long, short = token_batch(seed=12, batch=1, seq=10), token_batch(seed=13, batch=1, seq=6)
    padded_ids = torch.zeros(2, 10, dtype=torch.long)
    padded_ids[0], padded_ids[1, :6] = long["input_ids"][0], short["input_ids"][0]
    mask = (padded_ids != 0).long()
    mask[0] = 1
    padded = reference_scores(model, [{"input_ids": padded_ids, "attention_mask": mask}])
    alone = reference_scores(model, [long, short])
    for layer in padded:
        for key in (*KEYS, "routed"):
            assert torch.allclose(padded[layer][key], alone[layer][key], rtol=1e-5, atol=1e-7), (layer, key)


@pytest.mark.parametrize("family", FAMILIES)
def test_softmax_gate_is_the_unrenormalised_variant(family):
    model = make_moe_model(family)
    batches = [token_batch(seed=14)]
    applied, softmax = reference_scores(model, batches), reference_scores(model, batches, gate="softmax")
    for layer in applied:
        a, s = applied[layer]["reap"], softmax[layer]["reap"]
        if renormalises(model):
            assert (s <= a + 1e-9).all() and (s < a - 1e-6).any()
        else:
            assert torch.allclose(s, a, rtol=1e-5, atol=1e-9)
    with pytest.raises(ValueError, match="gate must be"):
        reference_scores(model, batches, gate="logit")
