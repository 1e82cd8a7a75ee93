"""Which class a saved pruned folder loads as with plain `from_pretrained`, and the stand-in config that makes it so.

A uniform structure (the same head, KV-head and FFN counts in every layer) is written into the family's own config
keys by `hfprune.prune`. Where the family's config refuses those numbers although its modeling code runs them
(transformers v5's `LlamaConfig` requires `hidden_size % num_attention_heads == 0`, `LlamaAttention` reads the explicit
`head_dim`), the arch adapter may name a stock family that runs the same computation (`ArchAdapter.plain_stand_in`:
Llama -> Mistral). `save_pruned` then writes that family's config, and says so in its log and in the model card;
`load_pruned` restores the class the model was pruned as.
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path

from ..arch import get_adapter
from ..structure import RECORD_KEY, config_builds_record, get_record

logger = logging.getLogger("hfprune")

SAVED_AS_KEY = "saved_as"  # inside the hfprune record: the config the model had before a stand-in replaced it


@dataclass(frozen=True)
class LoadsAs:
    """How a saved folder loads.

    Attributes:
        class_name (`str`): the transformers class plain `from_pretrained` builds (or would, if `plain`).
        plain (`bool`): whether plain `from_pretrained` (no hfprune) builds the pruned shapes.
        reason (`str`): why, in one sentence, for the log and the model card.
        pruned_as (`str`): the class the model was pruned as (what `load_pruned` returns).
    """

    class_name: str
    plain: bool
    reason: str
    pruned_as: str

    @property
    def stand_in(self) -> bool:
        return self.class_name != self.pruned_as


def uniform_spec(record: dict) -> tuple[dict | None, str]:
    """The one per-layer spec shared by every layer, or `None` and why the structure is not uniform."""
    layers = record["layers"]
    for key in ("heads", "kv_heads", "ffn"):
        values = sorted({spec[key] for spec in layers})
        if len(values) > 1:
            return None, f"the layers keep different {key.replace('_', ' ')} counts ({values})"
        if values == [0]:
            return None, f"every layer lost all its {key.replace('_', ' ')}, which no stock config can express"
    return layers[0], ""


def plain_config(model):
    """The config to write for `model` and how the folder will load.

    Returns:
        `(config, LoadsAs)`: `model.config` itself, or a stand-in family's config (a new object; the model is not
        changed) carrying the hfprune record and, under `saved_as`, the original config.
    """
    config = model.config
    pruned_as = type(model).__name__
    record = get_record(config)
    if record is None:
        return config, LoadsAs(pruned_as, True, "not pruned by hfprune", pruned_as)
    if record.get("unit") == "channels":  # a CNN: channel surgery already decided whether its own keys say it
        if record.get("plain_config"):
            return config, LoadsAs(pruned_as, True, "the config's own keys state the pruned channel widths", pruned_as)
        return config, LoadsAs(pruned_as, False, "the stock config cannot state per-group channel widths", pruned_as)
    if config_builds_record(config, record):
        return config, LoadsAs(pruned_as, True, "the config's own keys state the pruned structure", pruned_as)
    spec, why = uniform_spec(record)
    if spec is None:
        return config, LoadsAs(pruned_as, False, why, pruned_as)
    adapter = get_adapter(config)
    changes, reason = adapter.plain_stand_in(config, [pruned_as])
    if changes is None:
        return config, LoadsAs(pruned_as, False, f"its config cannot state the structure, and {reason}", pruned_as)
    stand_in = _stand_in_config(model, record, spec, changes)
    if stand_in is None:
        return config, LoadsAs(pruned_as, False, f"the {changes['model_type']} config refuses the structure too",
                               pruned_as)
    return stand_in, LoadsAs(changes["architectures"][0], True, reason, pruned_as)


def _stand_in_config(model, record: dict, spec: dict, changes: dict):
    from transformers import AutoConfig

    config, adapter = model.config, get_adapter(model)
    original = {k: v for k, v in config.to_dict().items() if k not in (RECORD_KEY, "transformers_version")}
    # Both are set on the config only by save_pretrained, and this may run before it (export_compressed_tensors).
    original["architectures"] = [type(model).__name__]
    dtype = getattr(model, "dtype", None)
    if dtype is not None:
        original["dtype"] = str(dtype).removeprefix("torch.")
    values = {k: v for k, v in original.items() if k not in ("model_type", "architectures", *changes["drop"])}
    values.update(changes["set"])
    values.update({adapter.config_heads_key: spec["heads"], adapter.config_kv_heads_key: spec["kv_heads"],
                   "head_dim": adapter.head_dim(model), adapter.config_ffn_key: spec["ffn"],
                   "num_hidden_layers": len(record["layers"])})
    try:
        new = AutoConfig.for_model(changes["model_type"], **values)
        new.validate()
    except Exception as err:  # noqa: BLE001  (StrictDataclassError, ValueError, ... depending on version)
        logger.info("stand-in %s config refused: %s", changes["model_type"], err)
        return None
    new.architectures = list(changes["architectures"])
    new_record = copy.deepcopy(record)
    # The history length tells a later load whether the model was pruned again after this save (then the saved
    # config is stale and the folder simply loads as the stand-in family).
    new_record[SAVED_AS_KEY] = {"config": original, "history_len": len(record["history"])}
    setattr(new, RECORD_KEY, new_record)
    return new if config_builds_record(new, new_record) else None


def original_config(config, overrides: dict | None = None):
    """The config a model was pruned with, when `save_pruned` wrote a stand-in family's config (else `config`)."""
    from transformers import AutoConfig

    record = get_record(config)
    if record is None or SAVED_AS_KEY not in record:
        return config
    if record[SAVED_AS_KEY].get("history_len") != len(record["history"]):
        return config  # pruned again after loading as the stand-in: that is what it is now
    saved = dict(record[SAVED_AS_KEY]["config"])
    restored = AutoConfig.for_model(saved.pop("model_type"), **saved)
    for key, value in (overrides or {}).items():
        setattr(restored, key, value)
    implementation = getattr(config, "_attn_implementation", None)  # chosen by the caller for the loaded config
    if implementation is not None:
        restored._attn_implementation = implementation
    setattr(restored, RECORD_KEY, {k: v for k, v in record.items() if k != SAVED_AS_KEY})
    return restored


def write_plain_config(model, folder: Path, label=None) -> LoadsAs:
    """After `model.save_pretrained(folder)`: write the stand-in config if one applies; log how the folder loads.

    Args:
        label (*optional*): the folder's name in the log (the final path when `folder` is a temporary one).
    """
    config, loads = plain_config(model)
    if loads.stand_in:
        config.save_pretrained(folder)
    label = label or folder
    if loads.plain:
        logger.info("%s loads with plain from_pretrained as %s: %s", label, loads.class_name, loads.reason)
    else:
        logger.info("%s needs hfprune.load_pruned (or add_remote_code) to load as %s: %s", label,
                    loads.pruned_as, loads.reason)
    return loads


def model_card(model, loads: LoadsAs) -> str:
    """README.md of a folder written by `save_pruned`: how it loads, and the per-layer structure."""
    record = get_record(model.config) or {}
    layers = record.get("layers", [])
    lines = ["---", "library_name: transformers", "tags:", "- hfprune", "- pruning", "---", "",
             f"# {loads.pruned_as} {'pruned' if layers else 'saved'} with hfprune", "", "## How this folder loads",
             ""]
    if loads.plain and loads.stand_in:
        lines += [f"- Plain transformers (no hfprune): `from_pretrained(folder)` builds **{loads.class_name}**, "
                  f"not {loads.pruned_as}, because {loads.reason}. The logits are the same.",
                  f"- `hfprune.load_pruned(folder)` builds {loads.pruned_as}, the class it was pruned as."]
    elif loads.plain:
        lines += [f"- Plain transformers (no hfprune): `from_pretrained(folder)` builds **{loads.class_name}** "
                  f"({loads.reason}).", "- `hfprune.load_pruned(folder)` gives the same model."]
    else:
        lines += [f"- Plain `from_pretrained` cannot build these shapes: {loads.reason}.",
                  f"- `hfprune.load_pruned(folder)` builds **{loads.pruned_as}** from the `hfprune` record in "
                  "config.json; `hfprune.add_remote_code(folder)` lets plain transformers load it "
                  "with `trust_remote_code=True`."]
    if layers:
        lines += ["", "## Structure", "", "| layer | heads | KV heads | FFN |", "|---|---|---|---|"]
        lines += [f"| {i} | {s['heads']} | {s['kv_heads']} | {s['ffn']} |" for i, s in enumerate(layers)]
    return "\n".join(lines) + "\n"
