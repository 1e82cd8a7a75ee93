"""The per-layer structure of a model and its record in `config.hfprune`.

The record is the single place where a pruned structure is written down: `prune` keeps it in step with the weights,
`save_pretrained` writes it with the config, and `load_pruned` rebuilds the shapes from it. Where the family's own
config can express the structure (same sizes in every layer, explicit `head_dim`), the plain config keys are updated
too, so the saved folder loads with vanilla `from_pretrained`.
"""

from __future__ import annotations

from torch import nn

RECORD_KEY = "hfprune"
RECORD_FORMAT = 1


def model_structure(model: nn.Module) -> dict:
    """Per-layer head, KV-head and FFN counts of `model` as it is now (CNNs: the size of every channel group)."""
    from .arch import get_adapter, unwrap_model

    model = unwrap_model(model)
    adapter = get_adapter(model)
    if getattr(adapter, "has_channels", False):
        from .arch.channels import channel_groups

        return {"model_type": model.config.model_type,
                "channels": {name: g.size for name, g in channel_groups(model).items()}}
    layers = adapter.layers(model)
    return {
        "model_type": model.config.model_type,
        "num_layers": len(layers),
        "heads": [adapter.num_heads(model, blk) for blk in layers],
        "kv_heads": [adapter.num_kv_heads(model, blk) for blk in layers],
        "ffn": [adapter.intermediate_size(blk) for blk in layers],
    }


def get_record(config) -> dict | None:
    record = getattr(config, RECORD_KEY, None)
    return record if isinstance(record, dict) else None


def sync_config(model: nn.Module, adapter, plan=None) -> dict:
    """Write the model's current structure into `model.config` (record + the plain keys that can express it).

    Args:
        plan (`PruningPlan`, *optional*): the plan just applied, appended to the record's history.
    """
    config = model.config
    record = get_record(config)
    structure = model_structure(model)
    if record is None:
        record = {
            "format": RECORD_FORMAT,
            "base": {k: structure[k] for k in ("num_layers", "heads", "kv_heads", "ffn")},
            "layers": [],
            "history": [],
        }
        sources = list(range(structure["num_layers"]))
    else:
        sources = [spec["source_index"] for spec in record["layers"]]
        if plan is not None and plan.layers:
            sources = [s for i, s in enumerate(sources) if i not in set(plan.layers)]
    record["layers"] = [
        {"heads": h, "kv_heads": kv, "ffn": f, "source_index": s}
        for h, kv, f, s in zip(structure["heads"], structure["kv_heads"], structure["ffn"], sources)
    ]
    if plan is not None:
        record["history"].append({k: v for k, v in plan.to_dict().items() if k != "meta"})

    config.num_hidden_layers = structure["num_layers"]
    heads, kv, ffn = set(structure["heads"]), set(structure["kv_heads"]), set(structure["ffn"])
    if adapter.config_heads_key and len(heads) == 1 and len(kv) == 1 and 0 not in heads:
        # The head size must stay what it is when the head count changes, so write it down explicitly.
        updates = {"head_dim": adapter.head_dim(model), adapter.config_heads_key: heads.pop()}
        if adapter.config_kv_heads_key:
            updates[adapter.config_kv_heads_key] = kv.pop()
        _set_if_valid(config, updates)
    if adapter.config_ffn_key and len(ffn) == 1 and 0 not in ffn:
        _set_if_valid(config, {adapter.config_ffn_key: ffn.pop()})
    setattr(config, RECORD_KEY, record)
    return record


_MISSING = object()


def _set_if_valid(config, updates: dict) -> bool:
    """Set plain config keys unless the config class's own validation rejects the result (then nothing changes).

    E.g. `LlamaConfig` requires `hidden_size % num_attention_heads == 0`, so 3 heads of a 32-wide model cannot be
    written there: the config would refuse to save. The `hfprune` record still holds the real structure.
    """
    previous = {key: getattr(config, key, _MISSING) for key in updates}
    for key, value in updates.items():
        setattr(config, key, value)
    validate = getattr(config, "validate", None)
    if not callable(validate):
        return True
    try:
        validate()
        return True
    except Exception:  # noqa: BLE001  (huggingface_hub's StrictDataclassError, ValueError, ... depending on version)
        for key, value in previous.items():
            if value is _MISSING:
                delattr(config, key)
            else:
                setattr(config, key, value)
        return False


def config_builds_record(config, record: dict) -> bool:
    """Whether the plain config alone (no hfprune) builds exactly the recorded shapes."""
    from .arch import get_adapter

    adapter = get_adapter(config)
    n = len(record["layers"])
    if int(config.num_hidden_layers) != n:
        return False
    heads = {s["heads"] for s in record["layers"]}
    kv = {s["kv_heads"] for s in record["layers"]}
    ffn = {s["ffn"] for s in record["layers"]}
    if len(heads) != 1 or len(kv) != 1 or len(ffn) != 1:
        return False
    (h,), (k,), (f,) = heads, kv, ffn
    if h != adapter.base_num_heads(config) or k != adapter.base_num_kv_heads(config):
        return False
    ffn_size = getattr(config, adapter.config_ffn_key, None) if adapter.config_ffn_key else None
    return ffn_size == f
