"""The `hidden` unit kind (a transformer's residual width): masked == pruned == load_pruned for every family that
lists it, alone and with heads / FFN / layers in the same plan; plain `from_pretrained` for Llama-family configs;
scores and selection; bad input."""

from __future__ import annotations

import random
import subprocess
import sys

import pytest
import torch
import transformers
from conftest import logits_of, make_inputs, make_model

import hfprune

HIDDEN_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gpt2", "bert", "roberta", "distilbert", "vit"]
TOL = 1e-4


def _random_plan(model, seed: int, with_others: bool) -> hfprune.PruningPlan:
    rng = random.Random(seed)
    size = hfprune.model_structure(model)["hidden_size"]
    plan = hfprune.PruningPlan(hidden=rng.sample(range(size), rng.randint(1, size - 1)))
    if with_others:
        plan.heads = {0: rng.sample(range(4), 2), 2: [rng.randrange(4)]}
        plan.neurons = {1: rng.sample(range(48), 11), 2: rng.sample(range(48), 3)}
        plan.layers = [1]
    return plan


def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("with_others", [False, True], ids=["hidden", "hidden+heads+ffn+layers"])
@pytest.mark.parametrize("family", HIDDEN_FAMILIES)
def test_masked_equals_pruned_equals_reloaded(family, with_others, tmp_path):
    model = make_model(family)
    inputs = make_inputs(model)
    dense = logits_of(model, inputs)
    plan = _random_plan(model, seed=len(family) + with_others, with_others=with_others)
    with hfprune.masked(model, plan):
        masked = logits_of(model, inputs)
    assert torch.equal(logits_of(model, inputs), dense)  # the mask left nothing behind
    assert (masked - dense).abs().max() > 1e-3  # the plan changes the model (the test can fail)
    hfprune.prune(model, plan)
    pruned = logits_of(model, inputs)
    assert (masked - pruned).abs().max() < TOL
    structure = hfprune.model_structure(model)
    assert structure["hidden_size"] == 32 - len(plan.hidden)
    hfprune.save_pruned(model, tmp_path / "out")
    reloaded = hfprune.load_pruned(tmp_path / "out")
    assert hfprune.model_structure(reloaded) == structure
    assert (logits_of(reloaded, inputs) - pruned).abs().max() < TOL


def test_a_second_plan_composes_and_the_tied_head_stays_tied(tmp_path):
    model = make_model("qwen2")  # tie_word_embeddings=True in the tiny config
    inputs = make_inputs(model)
    hfprune.prune(model, hfprune.PruningPlan(hidden=[0, 5, 31]))
    assert model.lm_head.weight is model.model.embed_tokens.weight
    second = hfprune.PruningPlan(hidden=[1, 2], heads={0: [3]})
    with hfprune.masked(model, second):
        masked = logits_of(model, inputs)
    hfprune.prune(model, second)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert hfprune.model_structure(model)["hidden_size"] == 27
    assert (logits_of(model, inputs) - masked).abs().max() < TOL
    assert model.config.hfprune["history"][-1]["hidden"] == [1, 2]


def test_masking_computes_the_norm_over_the_kept_channels_only():
    """A gate that zeroes channels is not enough: the norm's statistics must not count them."""
    model = make_model("llama")
    inputs = make_inputs(model)
    plan = hfprune.PruningPlan(hidden=list(range(0, 32, 2)))
    with hfprune.attach_gates(model, hidden=True, plan=plan) as gates:
        assert set(gates.of("hidden")) == {"stream"}
        assert gates.of("hidden")["stream"].sum() == 16
        masked = logits_of(model, inputs)
    hfprune.prune(model, plan)
    assert (logits_of(model, inputs) - masked).abs().max() < TOL


def test_uniform_llama_plan_reloads_with_plain_from_pretrained_without_hfprune(tmp_path):
    model = make_model("llama")
    inputs = make_inputs(model)
    plan = hfprune.PruningPlan(hidden=[3, 7, 8, 20, 21, 30, 1, 2],  # 32 -> 24
                               heads={i: [1] for i in range(3)},  # 4 -> 3 query heads, KV groups of 2 -> kv 2
                               neurons={i: list(range(0, 48, 4)) for i in range(3)})  # 48 -> 36
    hfprune.prune(model, plan)
    assert model.config.hidden_size == 24 and model.config.head_dim == 8
    folder = tmp_path / "plain"
    hfprune.save_pruned(model, folder)
    ids = inputs["input_ids"]
    expected = logits_of(model, {"input_ids": ids})
    torch.save({"ids": ids, "logits": expected}, tmp_path / "ref.pt")
    script = (
        "import sys, torch, transformers\n"
        "sys.modules['hfprune'] = None  # hfprune cannot be imported here\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(folder)!r}).eval()\n"
        "with torch.no_grad():\n"
        "    print('DIFF', (m(input_ids=ref['ids']).logits - ref['logits']).abs().max().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    diff = float(out.stdout.split("DIFF")[-1])
    assert diff < TOL


def test_non_llama_families_keep_their_config_width_and_need_the_record(tmp_path):
    model = make_model("bert")
    hfprune.prune(model, hfprune.PruningPlan(hidden=[0, 1, 2, 3]))
    assert model.config.hidden_size == 32  # head size is hidden_size / heads there: the record says the width
    assert model.config.hfprune["hidden_size"] == 28 and model.config.hfprune["base"]["hidden_size"] == 32
    assert not hfprune.structure.config_builds_record(model.config, model.config.hfprune)


@pytest.mark.parametrize("family", ["llama", "gpt2", "bert", "vit"])
def test_bad_plans_raise_one_clear_error_and_change_nothing(family):
    model = make_model(family)
    before = _state(model)
    config_before = model.config.to_dict()
    for plan, match in ((hfprune.PruningPlan(hidden=list(range(32))), "removes all 32 hidden channels"),
                        (hfprune.PruningPlan(hidden=[3, 32]), "channel 32 is out of range .*hidden size is 32"),
                        (hfprune.PruningPlan(hidden=[40], heads={0: [1]}), "channel 40 is out of range")):
        for action in (hfprune.prune, hfprune.mask):
            with pytest.raises(ValueError, match=match):
                action(model, plan)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before) and before.keys() == after.keys()
    assert model.config.to_dict() == config_before
    assert not any(m._forward_hooks for m in model.modules())


def test_plan_entry_and_json():
    plan = hfprune.PruningPlan(hidden=[5, 1])
    assert plan.hidden == [1, 5] and plan.count("hidden") == 2
    assert hfprune.PruningPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="lists channel 1 more than once"):
        hfprune.PruningPlan(hidden=[1, 1])
    with pytest.raises(ValueError, match="channel index -1 is negative"):
        hfprune.PruningPlan(hidden=[-1])


def test_an_unknown_head_or_a_family_without_hidden_is_refused():
    electra = make_model("electra")
    with pytest.raises(ValueError, match="ElectraForSequenceClassification has a task head"):
        hfprune.prune(electra, hfprune.PruningPlan(hidden=[0]))
    mlm = transformers.BertForMaskedLM(make_model("bert").config)
    with pytest.raises(ValueError, match="BertForMaskedLM"):
        hfprune.mask(mlm, hfprune.PruningPlan(hidden=[0]))
    from cnn_models import make_cnn

    with pytest.raises(ValueError, match="has no hidden channels"):
        hfprune.prune(make_cnn("resnet_basic"), hfprune.PruningPlan(hidden=[0]))


def test_prune_refuses_while_hidden_gates_are_attached():
    model = make_model("gpt2")
    before = _state(model)
    with hfprune.masked(model, hfprune.PruningPlan(hidden=[1])):
        with pytest.raises(ValueError, match="still has hidden-channel gates attached"):
            hfprune.prune(model, hfprune.PruningPlan(hidden=[1]))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


# ----- scores and selection -------------------------------------------------------------------------------------
def _lm_batches(model, n=2):
    out = []
    for i in range(n):
        inputs = make_inputs(model, seed=10 + i)
        out.append({**inputs, "labels": inputs["input_ids"]})
    return out


@pytest.mark.parametrize("criterion", ["activation", "magnitude", "taylor"])
def test_hidden_importance_gives_one_score_per_channel_and_leaves_the_model_alone(criterion):
    model = make_model("llama")
    before = _state(model)
    scores = hfprune.hidden_importance(model, _lm_batches(model), criterion=criterion, show_progress=False)
    assert scores.shape == (32,) and scores.dtype == torch.float32 and torch.isfinite(scores).all()
    assert scores.std() > 0
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not any(m._forward_hooks for m in model.modules())


def test_activation_scores_follow_minitron_aggregation():
    """Per block norm: |output| mean over the non-padding tokens, L2 over the batch; summed over the norms."""
    model = make_model("llama")
    batches = _lm_batches(model, 1)
    outputs = []
    handles = [m.register_forward_hook(lambda mod, a, out: outputs.append(out.detach()))
               for blk in model.model.layers for m in (blk.input_layernorm, blk.post_attention_layernorm)]
    with torch.no_grad():
        model(input_ids=batches[0]["input_ids"], attention_mask=batches[0]["attention_mask"])
    for h in handles:
        h.remove()
    keep = batches[0]["attention_mask"].bool().unsqueeze(-1).double()
    expected = sum(((o.double().abs() * keep).sum(1) / keep.sum(1)).pow(2).sum(0).sqrt() for o in outputs)
    scores = hfprune.hidden_importance(model, batches, criterion="activation", show_progress=False)
    torch.testing.assert_close(scores, expected.float(), rtol=1e-5, atol=1e-6)


def test_a_zeroed_channel_scores_lowest_and_is_selected_first():
    model = make_model("gpt2")
    with torch.no_grad():  # channel 9 carries nothing: no embedding column, no writer row, zero norm weights
        model.transformer.wte.weight[:, 9] = 0
        model.transformer.wpe.weight[:, 9] = 0
        for blk in model.transformer.h:
            for ln in (blk.ln_1, blk.ln_2):
                ln.weight[9] = 0
                ln.bias[9] = 0
    for criterion in ("activation", "magnitude"):
        scores = hfprune.hidden_importance(model, _lm_batches(model), criterion=criterion, show_progress=False)
        assert int(scores.argmin()) == 9, criterion
        assert 9 in hfprune.select_hidden(scores, ratio=0.1).hidden


def test_select_hidden_ratio_round_to_and_bad_input():
    scores = torch.arange(32, dtype=torch.float32).flip(0)  # channel 31 lowest
    plan = hfprune.select_hidden(scores, ratio=0.25)
    assert plan.hidden == list(range(24, 32)) and plan.meta["ratio"] == 0.25
    assert len(hfprune.select_hidden(scores, ratio=0.3, round_to=8).hidden) == 8  # keeps 22 -> 24
    assert len(hfprune.select_hidden(scores, ratio=0.99).hidden) == 31  # at least one channel stays
    for ratio in (1.0, 1.5, -0.1, float("nan"), True):
        with pytest.raises(ValueError, match=r"ratio must be a number in \[0, 1\)"):
            hfprune.select_hidden(scores, ratio=ratio)
    with pytest.raises(ValueError, match="round_to must be an integer >= 1"):
        hfprune.select_hidden(scores, ratio=0.5, round_to=0)
    with pytest.raises(ValueError, match="criterion for hidden must be one of"):
        hfprune.hidden_importance(make_model("llama"), None, criterion="michel")


def test_selected_plan_prunes_and_lowers_the_width():
    model = make_model("llama")
    batches = _lm_batches(model)
    plan = hfprune.select_hidden(hfprune.hidden_importance(model, batches, show_progress=False), ratio=0.25,
                                 round_to=4)
    hfprune.prune(model, plan)
    assert hfprune.model_structure(model)["hidden_size"] == 24
    assert model.config.hidden_size == 24
