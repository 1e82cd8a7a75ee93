"""The unit-kind contract: what every kind of removable unit answers, over its family adapter's description.

A unit kind (`heads`, `neurons`, `layers`, `channels`, ...) is a set of coupled slices: removing one unit removes an
index from several tensors at once, and the family adapter (`hfprune.arch`) says which tensors, along which axis,
and where a reversible gate sits. The kind turns that description into behaviour, once for every family:

* its **plan entry**: how `PruningPlan(<name>=...)` is normalised (`normalise`, `to_json`, `count`);
* **validation** against a model, before anything changes (errors name the layer / group and the index);
* its **sizes** in `hfprune.model_structure` and in the `config.hfprune` record (`structure`, `start_record`,
  `write_record`), and the plain **config keys** that can say them (`write_config`);
* its **gates**: hooks that make the masked model compute exactly what the pruned one does (`attach`);
* its **removal**: weights and config together, `old -> new` logged (`check_removal`, `remove`), in `order`;
* the **rebuild** of its shapes from a record when a pruned folder is loaded (`rebuild`).

`masking`, `surgery`, `structure`, `PruningPlan.validate` and `compensation` loop over the kinds an adapter lists
(`adapter.unit_kinds`); none of them knows a kind by name. Adding a kind is one module in `hfprune.units` (a
subclass listed in `hfprune.units.KINDS`) plus the adapter entries it reads.
"""

from __future__ import annotations

import torch
from torch import nn


class UnitKind:
    """One kind of removable unit. Subclasses set the attributes and override the methods their kind needs.

    Attributes:
        name (`str`): the plan key and keyword (`PruningPlan(heads=...)`, `attach_gates(heads=True)`).
        noun (`str`): what the units are, for messages ("attention heads").
        order (`int`): removal order, lowest first (`layers` last: the other kinds index layers as they are now).
        listed_when_empty (`bool`): the plan's JSON always holds this key (heads, neurons and layers always have).
        compensable (`bool`): removed-unit compensation (`hfprune.compensation`) applies to this kind.
        structure_keys (`tuple[str]`): this kind's keys in `model_structure` (and in a new record's `base`).
    """

    name: str = ""
    noun: str = ""
    order: int = 0
    listed_when_empty: bool = False
    compensable: bool = False
    structure_keys: tuple[str, ...] = ()

    # ----- the plan entry (no model) ------------------------------------------------------------------------------
    def empty(self):
        return {}

    def normalise(self, value):
        """The canonical entry for `value` (sorted, unique, non-negative indices); errors name the key and index."""
        raise NotImplementedError

    def to_json(self, entry):
        return entry

    def count(self, entry) -> int:
        return sum(len(v) for v in entry.values()) if isinstance(entry, dict) else len(entry)

    # ----- against a model ----------------------------------------------------------------------------------------
    def validate(self, model: nn.Module, adapter, plan) -> None:
        """Raise `ValueError` (naming the layer / group and the index) if `plan`'s entry does not fit `model`."""

    def structure(self, model: nn.Module, adapter) -> dict:
        """This kind's sizes in `model_structure` (per-layer lists or a mapping)."""
        return {}

    def attach(self, model: nn.Module, adapter, gates, plan, requires_grad: bool, which) -> None:
        """Add this kind's gates to `gates` (zero where `plan` removes a unit); `which`: `True` or the keys to gate."""
        raise NotImplementedError(f"unit kind {self.name!r} has no gates")

    def check_removal(self, model: nn.Module, adapter, plan) -> None:
        """Raise before any change if removing `plan`'s units is refused (a gate still attached, nothing left)."""

    def remove(self, model: nn.Module, adapter, plan) -> None:
        """Remove `plan`'s units of this kind physically (weights and the attributes the forward reads)."""
        raise NotImplementedError(f"unit kind {self.name!r} cannot be removed")

    # ----- the record and the config ------------------------------------------------------------------------------
    def start_record(self, record: dict, model: nn.Module, structure: dict) -> None:
        """Fill a new record's `base` (the structure before the first plan)."""
        record["base"].update({k: structure[k] for k in self.structure_keys})

    def write_record(self, record: dict, structure: dict, plan) -> None:
        """Write the current sizes into the record (`plan`: the plan just applied, or `None`)."""

    def write_config(self, model: nn.Module, adapter, structure: dict, record: dict, plan) -> None:
        """Set the plain config keys that can say this kind's current sizes (only where they can, exactly)."""

    def rebuild(self, model: nn.Module, adapter, record: dict) -> None:
        """Give a freshly built model this kind's recorded shapes (weights are loaded afterwards)."""

    def config_says(self, config, adapter, record: dict) -> bool:
        """Whether the plain config keys alone (no hfprune record) build this kind's recorded sizes."""
        return True

    # ----- compensation (`compensable` kinds) ---------------------------------------------------------------------
    def compensation_sites(self, model: nn.Module, adapter, plan) -> tuple[dict, set[str]]:
        """The consumers of `plan`'s removed units: `{consumer path: (target path, "bias", removed-input
        indicator)}`, and the config flags that give bias-free consumers their bias (`hfprune.compensation`)."""
        raise NotImplementedError(f"unit kind {self.name!r} has no compensation")


# ----- shared helpers ---------------------------------------------------------------------------------------------
def per_layer_entry(name: str, value) -> dict[int, list[int]]:
    """`{layer: [index, ...]}` with int keys (JSON gives strings), sorted unique non-negative indices."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"PruningPlan.{name} must be a dict {{layer: [index, ...]}}, got {type(value).__name__}")
    out: dict[int, list[int]] = {}
    for layer, indices in value.items():
        try:
            layer_i = int(layer)  # JSON keys are strings
        except (TypeError, ValueError):
            raise ValueError(f"PruningPlan.{name}: layer key {layer!r} is not an integer") from None
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"PruningPlan.{name}[{layer_i}] must be a list of integers, got {indices!r}")
        items = [int(i) for i in indices]
        if any(isinstance(i, bool) for i in indices) or items != list(indices):
            raise ValueError(f"PruningPlan.{name}[{layer_i}] must hold integers, got {list(indices)!r}")
        if layer_i < 0:
            raise ValueError(f"PruningPlan.{name}: layer index {layer_i} is negative")
        if items:
            out[layer_i] = sorted(items)
            if len(set(items)) != len(items):
                dup = sorted({i for i in items if items.count(i) > 1})
                raise ValueError(f"PruningPlan.{name}: layer {layer_i} lists index {dup[0]} more than once")
            if out[layer_i][0] < 0:
                raise ValueError(f"PruningPlan.{name}: layer {layer_i} has negative index {out[layer_i][0]}")
    return out


def index_entry(name: str, value, what: str = "layer") -> list[int]:
    """`[index, ...]`, sorted, unique, non-negative."""
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"PruningPlan.{name} must be a list of {what} indices, got {value!r}")
    items = list(value)
    try:
        ints = [int(i) for i in items]
    except (TypeError, ValueError):
        ints = None
    if ints is None or any(isinstance(i, bool) for i in items) or ints != items:
        raise ValueError(f"PruningPlan.{name} must hold integer {what} indices, got {items!r}")
    out = sorted(ints)
    dup = sorted({i for i in out if out.count(i) > 1})
    if dup:
        raise ValueError(f"PruningPlan.{name} lists {what} {dup[0]} more than once")
    if out and out[0] < 0:
        raise ValueError(f"PruningPlan.{name}: {what} index {out[0]} is negative")
    return out


def per_layer_json(entry: dict[int, list[int]]) -> dict[str, list[int]]:
    return {str(k): list(v) for k, v in sorted(entry.items())}


def check_per_layer(name: str, noun: str, entry: dict[int, list[int]], blocks, size_of) -> None:
    """Every layer key in range and every index below that layer's size (`size_of(block)`)."""
    n_layers = len(blocks)
    for layer, indices in entry.items():
        if layer >= n_layers:
            raise ValueError(f"PruningPlan.{name}: layer {layer} is out of range (model has {n_layers} layers)")
        size = size_of(blocks[layer])
        if indices[-1] >= size:
            raise ValueError(f"PruningPlan.{name}: layer {layer} index {indices[-1]} is out of range (layer {layer} "
                             f"has {size} {noun}); was this plan made for a different model?")


def new_gate(model: nn.Module, size: int, off, requires_grad: bool) -> torch.Tensor:
    """A float32 gate of ones on the model's device, zero at `off`; a leaf collecting gradients if asked."""
    gate = torch.ones(size, device=next(model.parameters()).device, dtype=torch.float32)
    if off:
        gate[list(off)] = 0.0
    return gate.requires_grad_(requires_grad)


def has_gate(module: nn.Module, tag: str) -> bool:
    """Whether `module` carries an hfprune gate hook of this kind (surgery refuses to resize it)."""
    return any(getattr(hook, "hfprune_gate", None) == tag for hook in module._forward_pre_hooks.values())


def gated_error(layer: int, what: str) -> ValueError:
    return ValueError(f"hfprune.prune: layer {layer} still has {what} gates attached (an hfprune.mask / masked / "
                      f"attach_gates handle, or PruningCallback's mask) and this plan resizes its {what}; remove "
                      "them first (handle.remove(), leave the `with hfprune.masked(...)` block, or "
                      "PruningCallback.remove_mask()). Nothing was changed.")


def bias_site(model: nn.Module, adapter, module: nn.Module, removed: torch.Tensor, sites: dict, flags: set,
              names: dict, optional: bool = False) -> None:
    """Add `module` as a compensation site folding into its bias (one the config can give it, else refused or, when
    `optional`, skipped)."""
    path = names[id(module)]
    if getattr(module, "bias", None) is None:
        flag = adapter.bias_flag_of(model, module)
        if flag is None:
            if optional:
                return
            raise ValueError(f"compensate: {path} has no bias and the {model.config.model_type} config has no flag "
                             "that gives it one, so there is nowhere to fold the removed units' mean; prune "
                             "without compensate=")
        flags.add(flag)
    if path in sites:
        sites[path][2].copy_(torch.maximum(sites[path][2], removed))
    else:
        sites[path] = (path, "bias", removed)


def module_names(model: nn.Module) -> dict[int, str]:
    return {id(m): n for n, m in model.named_modules()}


_MISSING = object()


def set_if_valid(config, updates: dict) -> bool:
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
