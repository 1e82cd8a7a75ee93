"""The criterion registry (hfprune.criteria): its contents, and that a new criterion is one module + its test."""

from __future__ import annotations

import pytest
import torch

import hfprune
import hfprune.criteria as registry
from hfprune.app.cli.flags import _argparse_kwargs, collect_flags
from hfprune.app.cli.main import build_parser
from hfprune.app.glue.options import GluePrune
from hfprune.criteria import criteria, criterion_names, get_criterion, register_criterion
from tests.conftest import make_inputs, make_model


def _batches(model, n=2):
    batches = []
    for i in range(n):
        inputs = make_inputs(model, seed=i)
        inputs["labels"] = torch.tensor([0, 1])
        batches.append(inputs)
    return batches


@pytest.fixture
def registered():
    """Registers criteria for one test only (they leave `_REGISTRY` afterwards, so other tests never see them)."""
    before = dict(registry._REGISTRY)
    registry._load()
    yield register_criterion
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_registry_holds_every_criterion_with_its_flags():
    # Listed defaults first, baselines last (the order of help texts, choices and error messages).
    assert criterion_names("heads") == ("michel", "taylor", "magnitude", "fisher", "activation", "random")
    assert criterion_names("neurons") == ("taylor", "magnitude", "fisher", "activation", "random")
    assert criterion_names("layers") == ("ablation", "gate", "block_influence", "angular")
    assert criterion_names("weights") == ("magnitude", "taylor", "wanda", "sparsegpt", "random")
    # The block-by-block calibration passes are flagged, so sparsify sends them to the sequential runner.
    assert [c.name for c in criteria("weights") if c.sequential] == ["wanda", "sparsegpt"]
    assert get_criterion("sparsegpt", "weights").updates_weights
    assert not get_criterion("wanda", "weights").updates_weights
    assert hfprune.importance.HEAD_CRITERIA == criterion_names("heads")
    assert hfprune.importance.NEURON_CRITERIA == criterion_names("neurons")
    michel = get_criterion("michel", "heads")
    assert michel.needs_data and michel.needs_labels and not michel.needs_seed and michel.options == ("return_entropy",)
    assert not get_criterion("magnitude", "neurons").needs_data
    assert get_criterion("random", "heads").needs_seed
    ablation = get_criterion("ablation", "layers")
    assert ablation.needs_data and not ablation.needs_labels and ablation.options == ("metric_fn",)
    # Taylor for heads and for weights are two criteria of one module, each with its own function.
    assert get_criterion("taylor", "heads").fn is not get_criterion("taylor", "weights").fn
    with pytest.raises(ValueError, match=r"'michel' scores heads, not neurons"):
        get_criterion("michel", "neurons")


def test_registering_badly_is_refused(registered):
    with pytest.raises(ValueError, match="units must be among"):
        registered("x", units=("filters",))
    with pytest.raises(ValueError, match="needs_labels=True implies needs_data=True"):
        registered("x", units=("heads",), needs_labels=True)
    with pytest.raises(ValueError, match="'michel' for heads is already registered by .*michel"):
        registered("michel", units=("heads",))(lambda model, dataloader=None, **common: [])


def test_a_new_head_criterion_is_usable_everywhere_once_registered(registered):
    seen = {}

    @registered("layer_index", units=("heads",), summary="layer index + head index / 10 (a test criterion)")
    def layer_index(model, dataloader=None, *, offset: float = 0.0, **common):
        seen.update(common)
        adapter = hfprune.get_adapter(model)
        return [idx + torch.arange(adapter.num_heads(model, block)) / 10 + offset
                for idx, block in enumerate(adapter.layers(model))]

    model = make_model("bert")
    raw = hfprune.head_importance(model, criterion="layer_index", normalize_layers=False, normalize_global=False,
                                  offset=1.0)
    assert torch.allclose(raw[2], torch.tensor([3.0, 3.1, 3.2, 3.3]))
    assert seen["max_batches"] is None and seen["plan"] is None and "seed" in seen  # the common keywords
    assert hfprune.select_heads(raw, count=3).heads == {0: [0, 1, 2]}  # the lowest scores: layer 0's first three
    with pytest.raises(ValueError, match="return_entropy=True is only available with criterion='michel'"):
        hfprune.head_importance(model, criterion="layer_index", return_entropy=True)
    with pytest.raises(ValueError, match="offst=2 is not an option of any heads criterion"):
        hfprune.head_importance(model, criterion="layer_index", offst=2)
    # Every list of choices is the registry's: API checks, recipe validation, CLI choices, callbacks.
    assert "layer_index" in hfprune.importance.HEAD_CRITERIA
    assert GluePrune(criterion="layer_index").criterion == "layer_index"
    assert "layer_index" in _argparse_kwargs(collect_flags()["--criterion"])["choices"]
    args = build_parser().parse_args(
        ["prune", "--model", "m", "--task", "sst2", "--output", "o", "--criterion", "layer_index"])
    assert args.criterion == "layer_index"
    assert hfprune.HeadImportanceCallback(criterion="layer_index").config.criterion == "layer_index"
    assert hfprune.PruningCallback(heads_ratio=0.5, criterion="layer_index").config.criterion == "layer_index"
    # Not registered for neurons: refused there, naming the unit kind it does score.
    with pytest.raises(ValueError, match="'layer_index' scores heads, not neurons"):
        hfprune.neuron_importance(model, criterion="layer_index")


def test_after_the_test_the_criterion_is_gone():
    assert "layer_index" not in criterion_names("heads")
    with pytest.raises(ValueError, match="criterion must be one of"):
        GluePrune(criterion="layer_index")


def test_flags_decide_data_and_seed_checks_before_any_work(registered):
    calls = []

    @registered("needs_everything", units=("neurons",), needs="gradients", needs_labels=True, needs_seed=True)
    def needs_everything(model, dataloader, **common):
        calls.append(1)
        return []

    model = make_model("bert")
    with pytest.raises(ValueError, match="criterion='needs_everything' needs data: it needs a dataloader of labelled"):
        hfprune.neuron_importance(model, None, criterion="needs_everything", seed=0)
    with pytest.raises(ValueError, match="criterion='needs_everything' needs a seed"):
        hfprune.neuron_importance(model, _batches(model), criterion="needs_everything")
    with pytest.raises(ValueError, match="NeuronScoringConfig: criterion='needs_everything' needs a seed"):
        hfprune.NeuronImportanceCallback(criterion="needs_everything")
    assert calls == []


def test_weight_and_layer_criteria_dispatch_with_their_options(registered):
    @registered("first_column", units=("weights",))
    def first_column(model, dataloader=None, *, targets, keep_column: int = 0, **common):
        scores = {}
        for t in targets:
            s = t.weight.detach().abs().clone()
            s[:, keep_column] = 1e6  # above every |w|: never pruned
            scores[t.name] = s
        return scores

    model = make_model("bert")
    handle = hfprune.sparsify(model, 0.5, criterion="first_column", keep_column=3)
    assert handle.config.criterion_options == {"keep_column": 3}
    for target in handle.targets:
        w = target.weight.detach()
        assert (w[:, 3] != 0).all(), target.key
    handle.update(0.7)  # the options are kept for the next masks
    assert all((t.weight.detach()[:, 3] != 0).all() for t in handle.targets)
    handle.finalize()
    with pytest.raises(ValueError, match="keep_colum=1 is not an option"):
        hfprune.sparsify(make_model("bert"), 0.5, criterion="first_column", keep_colum=1)
    with pytest.raises(ValueError, match="metric_fn=... is only available with criterion='ablation'"):
        hfprune.layer_importance(model, _batches(model), method="gate", metric_fn=lambda out, batch: 0.0)


def test_a_head_only_criterion_scores_neurons_with_the_criterion_of_its_pass(registered):
    from hfprune.criteria import closest_criterion

    assert closest_criterion("taylor", "neurons") == "taylor"
    assert closest_criterion("michel", "neurons") == "taylor"  # gradients -> the first gradient neuron criterion

    @registered("first_token", units=("heads",), needs="forward")
    def first_token(model, dataloader, **common):
        return []

    assert closest_criterion("first_token", "neurons") == "activation"  # forward -> the forward neuron criterion
    with pytest.raises(ValueError, match="'nowhere' is not registered for any unit kind"):
        closest_criterion("nowhere", "neurons")


def test_a_criterion_declares_its_pass_and_its_option_checks(registered):
    from hfprune.criteria import Option

    assert get_criterion("sparsegpt", "weights").needs == "blocks"
    assert get_criterion("michel", "heads").needs == "gradients"
    assert get_criterion("activation", "neurons").needs == "forward"
    assert get_criterion("magnitude", "heads").needs is None
    assert set(get_criterion("sparsegpt", "weights").checks) == {"blocksize", "percdamp", "true_sequential",
                                                                 "precision"}
    with pytest.raises(ValueError, match="needs must be None or one of"):
        registered("x", units=("heads",), needs="everything")
    with pytest.raises(ValueError, match="needs='blocks' prunes weights block by block"):
        registered("x", units=("heads",), needs="blocks")
    with pytest.raises(ValueError, match=r"options \['sizee'\] are not keyword parameters"):
        registered("x", units=("weights",), options={"sizee": Option(bool, "anything")})(
            lambda model, dataloader=None, *, size=1, **common: {})
