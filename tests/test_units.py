"""The unit model: every kind goes through one registry, so a new kind plugs in as one module + adapter entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from cnn_models import make_cnn
from conftest import logits_of, make_inputs, make_model
from test_import_graph import find_cycle, import_graph

import hfprune
from hfprune.arch import ChannelAdapter, TransformerAdapter, get_adapter, supported_model_types
from hfprune.arch.moe import MoEAdapter
from hfprune.arch.registry import _REGISTRY
from hfprune.units import UnitKind, kind_names, registry
from hfprune.units.base import index_entry, new_gate
from hfprune.units.neurons import reshape_ffn

PACKAGE = Path(hfprune.__file__).parent
UNIT_MODEL = ("hfprune.plan", "hfprune.masking", "hfprune.compensation", "hfprune.surgery", "hfprune.structure",
              "hfprune.units", "hfprune.arch", "hfprune.selection")


def test_every_family_lists_registered_kinds_and_only_its_own_paths():
    for model_type in supported_model_types():
        adapter = _REGISTRY[model_type]
        assert adapter.unit_kinds and set(adapter.unit_kinds) <= set(kind_names()), model_type
        if isinstance(adapter, ChannelAdapter):  # a CNN carries no transformer path
            assert adapter.unit_kinds == ("channels",)
            assert not isinstance(adapter, TransformerAdapter)
            assert not any(hasattr(adapter, a) for a in ("layers", "q_path", "o_path", "ffn_out", "num_heads"))
        elif isinstance(adapter, MoEAdapter):  # experts, no FFN neurons (OLMoE's full-width q/k norms: no heads)
            assert adapter.unit_kinds in (("layers", "heads", "experts"), ("layers", "experts")), model_type
        else:
            assert isinstance(adapter, TransformerAdapter)
            assert adapter.unit_kinds[:3] == ("layers", "heads", "neurons"), model_type
            assert set(adapter.unit_kinds[3:]) <= {"hidden"}, model_type


def test_no_channel_twins_and_no_duck_typed_probes():
    sources = {p: p.read_text() for p in PACKAGE.rglob("*.py")}
    assert not [p for p in sources if p.stem.endswith("_channels")]
    assert not [p for p, text in sources.items() if "has_channels" in text]


def test_the_unit_model_has_no_import_cycle_counting_imports_inside_functions():
    graph = import_graph(lazy=True)
    inside = {m: {t for t in ts if t.startswith(UNIT_MODEL)} for m, ts in graph.items() if m.startswith(UNIT_MODEL)}
    # the edges of the old circle masking -> compensation -> (channel gates) are there, one way
    assert "hfprune.compensation" in inside["hfprune.masking"] and "hfprune.units" in inside["hfprune.compensation"]
    cycle = find_cycle(inside)
    assert cycle is None, "import cycle, counting imports inside functions: " + " -> ".join(cycle)


def test_a_wrong_kind_for_the_family_names_what_the_model_is_and_has():
    cnn = make_cnn("resnet_basic")
    with pytest.raises(ValueError, match=r"PruningPlan.neurons: .* is a CNN .*has no FFN neurons \(it has channel"):
        hfprune.mask(cnn, hfprune.PruningPlan(neurons={0: [0]}))
    with pytest.raises(ValueError, match="is a CNN"):
        hfprune.attach_gates(cnn, heads=True)
    with pytest.raises(TypeError, match="unknown unit kind 'widths'"):
        hfprune.PruningPlan(widths=[0])


class FirstLayerNeurons(UnitKind):
    """A toy kind for this test: FFN neurons of layer 0 only, as a flat index list (reads the adapter's FFN paths)."""

    name = "first_ffn"
    noun = "first-layer FFN neurons"

    def empty(self):
        return []

    def normalise(self, value):
        return index_entry(self.name, value, "neuron")

    def to_json(self, entry):
        return list(entry)

    def validate(self, model, adapter, plan):
        size = adapter.intermediate_size(adapter.layers(model)[0])
        if plan.first_ffn and plan.first_ffn[-1] >= size:
            raise ValueError(f"PruningPlan.first_ffn: index {plan.first_ffn[-1]} is out of range (layer 0 has {size})")

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        block = adapter.layers(model)[0]
        gate = new_gate(model, adapter.intermediate_size(block), plan.first_ffn if plan else [], requires_grad)
        hook = adapter.ffn_out(block).register_forward_pre_hook(lambda module, args: (args[0] * gate, *args[1:]))
        gates.add(self.name, 0, gate, hook)

    def remove(self, model, adapter, plan):
        block = adapter.layers(model)[0]
        size = adapter.intermediate_size(block)
        reshape_ffn(adapter, block, [i for i in range(size) if i not in set(plan.first_ffn)])


def test_a_new_unit_kind_needs_only_its_module_and_the_adapter_entry(monkeypatch, tmp_path):
    """Registered and listed by the family, a new kind is planned, validated, masked, pruned, recorded and reloaded
    by the existing entry points, untouched."""
    model = make_model("bert", seed=0)
    adapter = get_adapter(model)
    monkeypatch.setitem(registry._KINDS, "first_ffn", FirstLayerNeurons())
    monkeypatch.setattr(type(adapter), "unit_kinds", (*adapter.unit_kinds, "first_ffn"))
    plan = hfprune.PruningPlan(first_ffn=[5, 1, 3], heads={1: [0]})
    assert plan.first_ffn == [1, 3, 5] and hfprune.PruningPlan.from_json(plan.to_json()) == plan
    with pytest.raises(ValueError, match="first_ffn: index 999 is out of range"):
        hfprune.prune(model, hfprune.PruningPlan(first_ffn=[999]))

    inputs = make_inputs(model)
    dense = logits_of(model, inputs)
    with hfprune.masked(model, plan) as gates:
        masked = logits_of(model, inputs)
        assert list(gates.of("first_ffn")) == [0]
    assert torch.equal(logits_of(model, inputs), dense) and not torch.allclose(masked, dense)
    ffn = hfprune.model_structure(model)["ffn"]
    hfprune.prune(model, plan)
    assert hfprune.model_structure(model)["ffn"] == [ffn[0] - 3, *ffn[1:]]
    assert model.config.hfprune["history"][-1]["first_ffn"] == [1, 3, 5]
    pruned = logits_of(model, inputs)
    assert (masked - pruned).abs().max().item() <= 1e-4
    model.save_pretrained(tmp_path / "out")
    reloaded = hfprune.load_pruned(tmp_path / "out")
    assert (logits_of(reloaded, inputs) - pruned).abs().max().item() <= 1e-4

    cnn = make_cnn("resnet_basic")  # a family that does not list the kind refuses it, naming it
    with pytest.raises(ValueError, match="has no first-layer FFN neurons"):
        hfprune.prune(cnn, hfprune.PruningPlan(first_ffn=[0]))
