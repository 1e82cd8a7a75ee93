"""Whole blocks: a layer goes with everything in it, and what the cache and masks read is re-numbered.

The gate blends a block's output with its input (gate 0: the residual stream passes through unchanged, exactly as
after removal). Layers are removed last, so the other kinds' layer indices stay those of the plan. The record keeps,
per layer, every per-layer size of the other kinds and the layer's index in the original model (`source_index`).
"""

from __future__ import annotations

import logging

from torch import nn

from ..arch.base import get_submodule
from .base import UnitKind, index_entry, new_gate

logger = logging.getLogger("hfprune")


def _layer_hook(gate):
    def hook(module, args, kwargs, output):
        hidden_in = args[0] if args else kwargs["hidden_states"]
        hidden_out = output[0] if isinstance(output, tuple) else output
        if not gate.requires_grad and float(gate) == 0.0:
            new = hidden_in  # exact skip, even if the block produced inf/nan
        else:
            g = gate.to(dtype=hidden_out.dtype, device=hidden_out.device)
            new = hidden_in + g * (hidden_out - hidden_in)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    return hook


class Layers(UnitKind):
    name = "layers"
    noun = "layers"
    order = 100  # last: heads / neurons of the same plan are indexed by the layers as they are now
    listed_when_empty = True
    structure_keys = ("num_layers",)

    def empty(self):
        return []

    def normalise(self, value):
        return index_entry(self.name, value, "layer")

    def to_json(self, entry):
        return list(entry)

    def validate(self, model, adapter, plan):
        n_layers = len(adapter.layers(model))
        for layer in plan.layers:
            if layer >= n_layers:
                raise ValueError(f"PruningPlan.layers: layer {layer} is out of range (model has {n_layers} layers)")

    def structure(self, model, adapter):
        return {"num_layers": len(adapter.layers(model))}

    def attach(self, model, adapter, gates, plan, requires_grad, which):
        for idx, block in enumerate(adapter.layers(model)):
            if which is True or idx in which:
                off = [0] if plan is not None and idx in plan.layers else []
                gate = new_gate(model, 1, off, False).squeeze(0).requires_grad_(requires_grad)
                gates.add(self.name, idx, gate, block.register_forward_hook(_layer_hook(gate), with_kwargs=True))

    def check_removal(self, model, adapter, plan):
        n_layers = len(adapter.layers(model))
        if plan.layers and len(plan.layers) >= n_layers:  # masking them all is a fine "what if"; removing them is not
            raise ValueError(f"PruningPlan.layers removes all {n_layers} layers; at least one must stay")

    def remove(self, model, adapter, plan):
        before = len(adapter.layers(model))
        remove_layers(model, adapter, plan.layers)
        logger.info("layers %d -> %d (removed %s)", before, before - len(plan.layers), plan.layers)

    def start_record(self, record, model, structure):
        super().start_record(record, model, structure)
        record["layers"] = [{"source_index": i} for i in range(structure["num_layers"])]

    def write_record(self, record, structure, plan):
        sources = [spec["source_index"] for spec in record["layers"]]
        if plan is not None and plan.layers:
            sources = [s for i, s in enumerate(sources) if i not in set(plan.layers)]
        n = structure["num_layers"]
        per_layer = {k: v for k, v in structure.items() if isinstance(v, list) and len(v) == n}
        record["layers"] = [{**{k: v[i] for k, v in per_layer.items()}, "source_index": s}
                            for i, s in enumerate(sources)]

    def write_config(self, model, adapter, structure, record, plan):
        model.config.num_hidden_layers = structure["num_layers"]

    def rebuild(self, model, adapter, record):
        n = len(adapter.layers(model))
        if len(record["layers"]) != n:
            raise ValueError(f"hfprune record lists {len(record['layers'])} layers but the config builds {n}")

    def config_says(self, config, adapter, record):
        return int(config.num_hidden_layers) == len(record["layers"])


def remove_layers(model: nn.Module, adapter, drop: list[int]) -> None:
    """Drop whole blocks and re-number what the cache and masks read (`layer_idx`, `config.layer_types`)."""
    if not drop:
        return
    layers = adapter.layers(model)
    kept = [i for i in range(len(layers)) if i not in set(drop)]
    new_list = nn.ModuleList([layers[i] for i in kept])
    for new_idx, block in enumerate(new_list):
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new_idx
    adapter.set_layers(model, new_list)
    parent = get_submodule(model, adapter.layers_path(model).rpartition(".")[0])
    for name in ("n_layers", "num_layers", "num_hidden_layers"):
        if isinstance(getattr(parent, name, None), int):
            setattr(parent, name, len(kept))
    layer_types = getattr(model.config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == len(layers):
        model.config.layer_types = [layer_types[i] for i in kept]
    model.config.num_hidden_layers = len(kept)
