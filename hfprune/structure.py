"""The per-layer structure of a model and its record in `config.hfprune`.

The record is the single place where a pruned structure is written down: `prune` keeps it in step with the weights,
`save_pretrained` writes it with the config, and `load_pruned` rebuilds the shapes from it. Where the family's own
config can express the structure (same sizes in every layer, explicit `head_dim`), the plain config keys are updated
too, so the saved folder loads with vanilla `from_pretrained`.
"""

from __future__ import annotations

from torch import nn

from .arch import get_adapter, unwrap_model
from .units import get_kind, kind_names, kinds_of

RECORD_KEY = "hfprune"
RECORD_FORMAT = 1


def model_structure(model: nn.Module) -> dict:
    """The sizes of every unit kind of `model` as it is now: per-layer head, KV-head and FFN counts and the number of
    layers of a transformer, the size of every channel group of a CNN."""
    model = unwrap_model(model)
    adapter = get_adapter(model)
    structure = {"model_type": model.config.model_type}
    for kind in kinds_of(adapter):
        structure.update(kind.structure(model, adapter))
    return structure


def get_record(config) -> dict | None:
    record = getattr(config, RECORD_KEY, None)
    return record if isinstance(record, dict) else None


def sync_config(model: nn.Module, adapter, plan=None) -> dict:
    """Write the model's current structure into `model.config` (record + the plain keys that can express it).

    Args:
        plan (`PruningPlan`, *optional*): the plan just applied, appended to the record's history.
    """
    structure = model_structure(model)
    kinds = kinds_of(adapter)
    record = get_record(model.config)
    if record is None:
        record = {"format": RECORD_FORMAT, "base": {}, "history": []}
        for kind in kinds:
            kind.start_record(record, model, structure)
    for kind in kinds:
        kind.write_record(record, structure, plan)
    if plan is not None:
        record["history"].append({name: get_kind(name).to_json(plan.units[name]) for name in kind_names()
                                  if name in adapter.unit_kinds})
    for kind in kinds:
        kind.write_config(model, adapter, structure, record, plan)
    setattr(model.config, RECORD_KEY, record)
    return record


def apply_structure(model: nn.Module, record: dict) -> None:
    """Give a freshly built model the shapes in `record` (weights are loaded afterwards)."""
    adapter = get_adapter(model)
    for kind in kinds_of(adapter):
        kind.rebuild(model, adapter, record)
    adapter.after_build(model, record)


def config_builds_record(config, record: dict) -> bool:
    """Whether the plain config alone (no hfprune) builds exactly the recorded shapes."""
    adapter = get_adapter(config)
    return all(kind.config_says(config, adapter, record) for kind in kinds_of(adapter))
