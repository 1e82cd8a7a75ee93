"""Nothing lost in the core: bad inputs to prune / mask / the scorers / selection / sparsify.

Every case asserts the error type, that the message names the offending thing (argument, layer, weight, key, id),
and that the model is unchanged (state dict, config, hooks). The cases of issue 17 are among them: a failure in the
second `reshape_ffn`, Ctrl-C during a prune, `prune` under active weight masks, a Llama plan applied to a BERT, a
plan applied twice, `prune(model, None)` / a dict, Wanda with token ids outside the vocabulary.
"""

from __future__ import annotations

import re

import pytest
import torch
from cnn_models import make_cnn, pixel_batch
from conftest import make_inputs, make_model
from test_faults_prune import assert_unchanged, fingerprint

import hfprune
from hfprune import PruningPlan
from hfprune.sparsity import active_weight_masks
from hfprune.units import neurons


def _unchanged(model, before):
    assert_unchanged(model, before)


# ----- the cases ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("exc", [RuntimeError("disk on fire"), KeyboardInterrupt()])
def test_a_failure_in_the_second_reshape_ffn_leaves_the_model_as_it_was(exc, monkeypatch, tmp_path):
    model = make_model("bert")
    inputs = make_inputs(model)
    before, logits = fingerprint(model), model(**inputs).logits.detach()
    real, calls = neurons.reshape_ffn, []

    def second_fails(*args):
        calls.append(args)
        if len(calls) == 2:
            raise exc
        return real(*args)

    monkeypatch.setattr(neurons, "reshape_ffn", second_fails)
    plan = PruningPlan(heads={0: [1]}, neurons={0: [0, 1], 1: [5, 6]})
    with pytest.raises(type(exc)):
        hfprune.prune(model, plan)
    assert len(calls) == 2
    assert_unchanged(model, before, inputs, logits)
    assert hfprune.model_structure(model)["heads"] == [4, 4, 4] and "hfprune" not in model.config.to_dict()
    monkeypatch.undo()
    hfprune.prune(model, plan)  # now it goes through, and the folder loads back
    hfprune.save_pruned(model, tmp_path / "out")
    assert hfprune.model_structure(hfprune.load_pruned(tmp_path / "out"))["ffn"] == [46, 46, 48]


@pytest.mark.parametrize("action", ["prune", "mask"])
def test_structural_pruning_under_active_weight_masks_is_refused(action):
    model = make_model("bert")
    hfprune.sparsify(model, 0.5, targets=["*layer.1.intermediate.dense"])
    before = fingerprint(model)
    with pytest.raises(ValueError, match=rf"hfprune\.{action}: weight masks are active on "
                                         r"bert\.encoder\.layer\.1\.intermediate\.dense\.weight"):
        getattr(hfprune, action)(model, PruningPlan(neurons={1: [0, 1]}))
    _unchanged(model, before)


def test_a_llama_plan_selected_without_model_is_refused_by_a_bert():
    llama, bert = make_model("llama"), make_model("bert")
    scores = hfprune.head_importance(llama, criterion="random", seed=0)
    plan = hfprune.select_heads(scores, count=2)  # no model=: the scores carry the structure
    assert plan.meta["model_structure"]["model_type"] == "llama"
    before = fingerprint(bert)
    with pytest.raises(ValueError, match="model_type was 'llama', the model has 'bert'"):
        hfprune.prune(bert, plan)
    _unchanged(bert, before)
    hfprune.prune(make_model("llama"), plan)  # the model it was made for takes it


def test_a_plan_applied_twice_is_refused_naming_the_layer():
    model = make_model("bert")
    plan = hfprune.select_heads(hfprune.head_importance(model, criterion="magnitude"), count=2, scope="layer")
    hfprune.prune(model, plan)
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"heads of layer 0 was 4, the model has 2 \(\[4, 4, 4\] vs \[2, 2, 2\]\) "
                                         r"\(applied twice"):
        hfprune.prune(model, plan)
    with pytest.raises(ValueError, match="heads of layer 0 was 4"):
        hfprune.mask(model, plan)
    _unchanged(model, before)


@pytest.mark.parametrize("select", ["neurons", "layers", "entropy", "hidden"])
def test_every_selection_carries_the_structure(select):
    model, other = make_model("bert"), make_model("distilbert")
    batches = [{**make_inputs(model, batch=4), "labels": torch.arange(4) % 3}]
    if select == "neurons":
        plan = hfprune.select_neurons(hfprune.neuron_importance(model, criterion="magnitude"), ratio=0.2)
    elif select == "layers":
        plan = hfprune.select_layers(hfprune.layer_importance(model, batches, show_progress=False), count=1)
    elif select == "hidden":
        plan = hfprune.select_hidden(hfprune.hidden_importance(model, criterion="magnitude"), ratio=0.25)
    else:
        result = hfprune.head_importance(model, batches, return_entropy=True, show_progress=False)
        assert result.structure == hfprune.model_structure(model)
        plan = hfprune.select_heads(result, count=2)
    assert plan.meta["model_structure"] == hfprune.model_structure(model)
    plan.validate(model)
    before = fingerprint(other)
    with pytest.raises(ValueError, match="model_type was 'bert', the model has 'distilbert'"):
        hfprune.prune(other, plan)
    _unchanged(other, before)


def test_plans_from_bare_scores_carry_what_the_scores_imply():
    model = make_model("bert")  # 3 layers
    plan = hfprune.select_neurons([torch.rand(48), torch.rand(48)], count=4)
    assert plan.meta["model_structure"] == {"num_layers": 2}
    before = fingerprint(model)
    with pytest.raises(ValueError, match="num_layers was 2, the model has 3"):
        hfprune.prune(model, plan)
    _unchanged(model, before)
    with pytest.raises(ValueError, match="hidden_size was 40, the model has 32"):
        hfprune.prune(model, hfprune.select_hidden(torch.rand(40), ratio=0.25))
    _unchanged(model, before)
    cnn = make_cnn("resnet_basic")
    name = next(n for n, g in hfprune.channel_groups(cnn).items() if g.prunable and not g.coupled)
    size = hfprune.channel_groups(cnn)[name].size
    plan = hfprune.select_channels({name: torch.rand(size + 2)}, ratio=0.25)
    with pytest.raises(ValueError, match=re.escape(f"channels[{name!r}] was {size + 2}, the model has {size}")):
        hfprune.prune(cnn, plan)
    hfprune.prune(cnn, hfprune.select_channels({name: torch.rand(size)}, ratio=0.25))


def test_channel_scores_carry_the_structure():
    cnn, other = make_cnn("resnet_basic"), make_cnn("resnet_basic", seed=1)
    scores = hfprune.channel_importance(cnn, criterion="l1", groups="inner")
    plan = hfprune.select_channels(scores, ratio=0.3)
    hfprune.prune(other, plan)  # same structure: fine
    before = fingerprint(other)
    with pytest.raises(ValueError, match="channels.* was .*, the model has"):
        hfprune.prune(other, plan)  # twice
    _unchanged(other, before)


def test_wanda_with_token_ids_outside_the_vocabulary_names_the_id_and_the_size():
    model = make_model("llama")
    before = fingerprint(model)
    ids = torch.tensor([[1, 2, 3, 150, 4], [5, 6, 7, 8, 9]])
    with pytest.raises(ValueError, match=r"batch 0: token id 150 is outside the vocabulary of LlamaForCausalLM "
                                         r"\(99 tokens, ids 0\.\.98; largest id in the batch: 150\)"):
        hfprune.sparsify(model, 0.5, criterion="wanda", dataloader=[{"input_ids": ids}])
    _unchanged(model, before)
    assert active_weight_masks(model) == {}
    with pytest.raises(ValueError, match="token id -1 is outside the vocabulary"):
        hfprune.sparsify(model, 0.5, criterion="sparsegpt", dataloader=[{"input_ids": ids.clamp(max=9) - 2}])
    _unchanged(model, before)


# ----- type checks at the public entry points ---------------------------------------------------------------------
def _bert_plan():
    return PruningPlan(heads={0: [1]})


TYPE_CASES = {
    # name -> (call(model), pattern in the TypeError)
    "prune plan None": (lambda m: hfprune.prune(m, None), r"hfprune\.prune: plan must be a hfprune\.PruningPlan.*"
                                                          r"got NoneType"),
    "prune plan dict": (lambda m: hfprune.prune(m, {"heads": {0: [1]}}),
                        r"plan must be a hfprune\.PruningPlan.*got dict; a dict .* PruningPlan\.from_dict"),
    "prune plan JSON text": (lambda m: hfprune.prune(m, '{"heads": {}}'), r"got str; a dict or JSON text"),
    "prune model str": (lambda m: hfprune.prune("bert-base-uncased", _bert_plan()),
                        r"hfprune\.prune: model must be a torch\.nn\.Module.*got str \('bert-base-uncased'\)"),
    "prune model state dict": (lambda m: hfprune.prune(m.state_dict(), _bert_plan()),
                               r"model must be a torch\.nn\.Module.*got OrderedDict"),
    "mask plan None": (lambda m: hfprune.mask(m, None), r"hfprune\.mask: plan must be a hfprune\.PruningPlan"),
    "mask plan list": (lambda m: hfprune.mask(m, [1, 2]), r"hfprune\.mask: plan must be .*got list"),
    "masked plan dict": (lambda m: hfprune.masked(m, {"heads": {0: [1]}}).__enter__(),
                         r"hfprune\.masked: plan must be a hfprune\.PruningPlan.*got dict"),
    "masked model None": (lambda m: hfprune.masked(None, _bert_plan()).__enter__(),
                          r"hfprune\.masked: model must be a torch\.nn\.Module.*got NoneType"),
    "attach_gates plan str": (lambda m: hfprune.attach_gates(m, heads=True, plan="heads"),
                              r"hfprune\.attach_gates: plan must be a hfprune\.PruningPlan.*got str"),
    "sparsify model str": (lambda m: hfprune.sparsify("bert", 0.5),
                           r"hfprune\.sparsify: model must be a torch\.nn\.Module.*got str"),
    "sparsify criterion int": (lambda m: hfprune.sparsify(m, 0.5, criterion=3),
                               r"hfprune\.sparsify: criterion must be a criterion name \(str\).*got int"),
    "sparsify pattern tuple": (lambda m: hfprune.sparsify(m, pattern=(2, 4)),
                               r"hfprune\.sparsify: pattern must be a pattern \(str\).*got tuple"),
    "sparsify dataloader str": (lambda m: hfprune.sparsify(m, 0.5, criterion="taylor", dataloader="train.txt"),
                                r"hfprune\.sparsify: dataloader must be a DataLoader or an iterable.*got str"),
    "sparsify sparsity str": (lambda m: hfprune.sparsify(m, "0.5"), r"sparsity must be a number in \[0, 1\)"),
    "head_importance model str": (lambda m: hfprune.head_importance("bert", criterion="magnitude"),
                                  r"head_importance: model must be a torch\.nn\.Module.*got str"),
    "head_importance plan dict": (lambda m: hfprune.head_importance(m, criterion="magnitude", plan={"heads": {}}),
                                  r"head_importance: plan must be a hfprune\.PruningPlan.*got dict"),
    "head_importance criterion None": (lambda m: hfprune.head_importance(m, criterion=None),
                                       r"head_importance: criterion must be a criterion name \(str\).*NoneType"),
    "neuron_importance dataloader int": (lambda m: hfprune.neuron_importance(m, 5),
                                         r"neuron_importance: dataloader must be a DataLoader or an iterable.*int"),
    "layer_importance method list": (lambda m: hfprune.layer_importance(m, [], method=["ablation"]),
                                     r"layer_importance: criterion must be a criterion name \(str\).*got list"),
    "channel_importance model int": (lambda m: hfprune.channel_importance(3),
                                     r"channel_importance: model must be a torch\.nn\.Module.*got int"),
}


@pytest.mark.parametrize("case", list(TYPE_CASES))
def test_a_wrong_type_names_the_argument_and_what_it_expects(case):
    call, pattern = TYPE_CASES[case]
    model = make_model("bert")
    before = fingerprint(model)
    with pytest.raises(TypeError, match=pattern):
        call(model)
    _unchanged(model, before)
    assert active_weight_masks(model) == {}


def test_compensation_batches_of_the_wrong_kind_change_nothing():
    model = make_cnn("resnet_basic")
    name = next(n for n, g in hfprune.channel_groups(model).items() if g.prunable and not g.coupled)
    plan = PruningPlan(channels={name: [0]})
    before = fingerprint(model)
    with pytest.raises(ValueError, match=r"every batch must be a dict with 'pixel_values' \(got keys \['x'\]\)"):
        hfprune.prune(model, plan, compensate=[{"x": pixel_batch()["pixel_values"]}])
    _unchanged(model, before)
