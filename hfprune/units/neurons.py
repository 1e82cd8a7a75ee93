"""FFN neurons: an output row of every FFN input projection (up and gate) and an input column of the down projection.

The gate multiplies the down projection's input, so a masked neuron contributes exactly what a removed one does; an
FFN with no neuron left adds only its output bias.
"""

from __future__ import annotations

import logging

import torch

from ..arch.base import set_submodule
from .base import (
    UnitKind,
    bias_site,
    check_per_layer,
    gated_error,
    has_gate,
    module_names,
    new_gate,
    per_layer_entry,
    per_layer_json,
    set_if_valid,
)
from .slicing import select_inputs, select_outputs, zero_width_safe

logger = logging.getLogger("hfprune")


def _neuron_hook(gate: torch.Tensor):
    def hook(module, args):
        x = args[0]
        return (x * gate.to(dtype=x.dtype, device=x.device), *args[1:])

    hook.hfprune_gate = "neurons"
    return hook


class Neurons(UnitKind):
    name = "neurons"
    noun = "FFN neurons"
    order = 0
    listed_when_empty = True
    compensable = True
    structure_keys = ("ffn",)

    def normalise(self, value):
        return per_layer_entry(self.name, value)

    def to_json(self, entry):
        return per_layer_json(entry)

    def validate(self, model, adapter, plan):
        check_per_layer(self.name, self.name, plan.neurons, adapter.layers(model), adapter.intermediate_size)

    def structure(self, model, adapter):
        return {"ffn": [adapter.intermediate_size(blk) for blk in adapter.layers(model)]}

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        for idx, block in enumerate(adapter.layers(model)):
            if which is True or idx in which:
                gate = new_gate(model, adapter.intermediate_size(block), plan.neurons.get(idx, []) if plan else [],
                                requires_grad)
                gates.add(self.name, idx, gate, adapter.ffn_out(block).register_forward_pre_hook(_neuron_hook(gate)))

    def check_removal(self, model, adapter, plan):
        layers = adapter.layers(model)
        for idx in plan.neurons:
            if idx not in plan.layers and has_gate(adapter.ffn_out(layers[idx]), self.name):
                raise gated_error(idx, self.name)

    def remove(self, model, adapter, plan):
        for idx, block in enumerate(adapter.layers(model)):
            removed = set(plan.neurons.get(idx, []))
            if not removed or idx in plan.layers:
                continue
            size = adapter.intermediate_size(block)
            reshape_ffn(adapter, block, [n for n in range(size) if n not in removed])
            logger.info("layer %d: FFN neurons %d -> %d", idx, size, size - len(removed))

    def write_config(self, model, adapter, structure, record, plan):
        ffn = set(structure["ffn"])
        if adapter.config_ffn_key and len(ffn) == 1 and 0 not in ffn:
            set_if_valid(model.config, {adapter.config_ffn_key: ffn.pop()})

    def rebuild(self, model, adapter, record):
        for block, spec in zip(adapter.layers(model), record["layers"]):
            if int(spec["ffn"]) != adapter.intermediate_size(block):
                reshape_ffn(adapter, block, list(range(int(spec["ffn"]))))

    def compensation_sites(self, model, adapter, plan):
        sites, flags, names = {}, set(), module_names(model)
        blocks = adapter.layers(model)
        for idx, removed in plan.neurons.items():
            if idx not in plan.layers:
                indicator = torch.zeros(adapter.intermediate_size(blocks[idx]))
                indicator[removed] = 1.0
                bias_site(model, adapter, adapter.ffn_out(blocks[idx]), indicator, sites, flags, names)
        return sites, flags

    def config_says(self, config, adapter, record):
        ffn = {s["ffn"] for s in record["layers"]}
        size = getattr(config, adapter.config_ffn_key, None) if adapter.config_ffn_key else None
        return ffn == {size}


def reshape_ffn(adapter, layer, keep: list[int]) -> None:
    """Keep FFN neurons `keep` of one layer, in place (an FFN with none left adds only its output bias)."""
    index = torch.tensor(keep, dtype=torch.long)
    for module in adapter.ffn_in(layer):
        select_outputs(module, index)
    select_inputs(adapter.ffn_out(layer), index)
    if not keep:
        set_submodule(layer, adapter.ffn_out_path, zero_width_safe(adapter.ffn_out(layer)))
    adapter.set_ffn_attrs(layer, len(keep))
