"""`PruningPlan`: the units to remove, indexed as the model is now."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from .io.atomic import write_atomic


def _as_index_lists(name: str, value) -> dict[int, list[int]]:
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
        if items:
            out[layer_i] = sorted(items)
            if len(set(items)) != len(items):
                dup = sorted({i for i in items if items.count(i) > 1})
                raise ValueError(f"PruningPlan.{name}: layer {layer_i} lists index {dup[0]} more than once")
    return out


def _as_channel_lists(value) -> dict[str, list[int]]:
    """`{group_name: [channel, ...]}` with sorted, unique, non-negative integer indices (empty lists dropped)."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise TypeError(f"PruningPlan.channels must be a dict {{group_name: [index, ...]}}, got {type(value).__name__}")
    out: dict[str, list[int]] = {}
    for name, indices in value.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"PruningPlan.channels: group key {name!r} must be a group name (a module path string)")
        if isinstance(indices, (str, bytes)) or not hasattr(indices, "__iter__"):
            raise TypeError(f"PruningPlan.channels[{name!r}] must be a list of integers, got {indices!r}")
        items = list(indices)
        ints = [int(i) for i in items] if all(isinstance(i, int) and not isinstance(i, bool) for i in items) \
            else None
        if ints is None:
            raise ValueError(f"PruningPlan.channels[{name!r}] must hold integers, got {items!r}")
        if len(set(ints)) != len(ints):
            dup = sorted({i for i in ints if ints.count(i) > 1})
            raise ValueError(f"PruningPlan.channels: group {name!r} lists channel {dup[0]} more than once")
        if ints and min(ints) < 0:
            raise ValueError(f"PruningPlan.channels: group {name!r} has negative index {min(ints)}")
        if ints:
            out[name] = sorted(ints)
    return out


def _as_layer_list(value) -> list[int]:
    if value is None:
        return []
    if isinstance(value, (str, bytes, dict)) or not hasattr(value, "__iter__"):
        raise TypeError(f"PruningPlan.layers must be a list of layer indices, got {value!r}")
    items = list(value)
    try:
        ints = [int(i) for i in items]
    except (TypeError, ValueError):
        ints = None
    if ints is None or any(isinstance(i, bool) for i in items) or ints != items:
        raise ValueError(f"PruningPlan.layers must hold integer layer indices, got {items!r}")
    layers = sorted(ints)
    dup = sorted({i for i in layers if layers.count(i) > 1})
    if dup:
        raise ValueError(f"PruningPlan.layers lists layer {dup[0]} more than once")
    return layers


@dataclass
class PruningPlan:
    """The units to remove from a model, indexed as the model is *now* (before this plan is applied).

    Args:
        heads (`dict[int, list[int]]`): attention heads to remove, per layer (query heads for GQA models).
        neurons (`dict[int, list[int]]`): FFN neurons (intermediate channels) to remove, per layer.
        layers (`list[int]`): whole blocks to remove.
        channels (`dict[str, list[int]]`): CNN channels to remove, per channel group (the group's name from
            `hfprune.channel_groups`, e.g. `"resnet.encoder.stages.0.layers.0.layer.0.convolution"`).
        meta (`dict`): free-form provenance (criterion, ratio, scores file ...), kept in the JSON.

    Example:
        ```python
        >>> plan = PruningPlan(heads={0: [1, 3]}, neurons={1: [0, 5, 9]}, layers=[2])
        >>> PruningPlan.from_json(plan.to_json()) == plan
        True
        ```
    """

    heads: dict[int, list[int]] = field(default_factory=dict)
    neurons: dict[int, list[int]] = field(default_factory=dict)
    layers: list[int] = field(default_factory=list)
    meta: dict = field(default_factory=dict)
    channels: dict[str, list[int]] = field(default_factory=dict)

    def __post_init__(self):
        self.channels = _as_channel_lists(self.channels)
        self.heads = _as_index_lists("heads", self.heads)
        self.neurons = _as_index_lists("neurons", self.neurons)
        layers = _as_layer_list(self.layers)
        self.layers = layers
        for name, mapping in (("heads", self.heads), ("neurons", self.neurons)):
            for layer, indices in mapping.items():
                if layer < 0:
                    raise ValueError(f"PruningPlan.{name}: layer index {layer} is negative")
                if indices and indices[0] < 0:
                    raise ValueError(f"PruningPlan.{name}: layer {layer} has negative index {indices[0]}")
        if layers and layers[0] < 0:
            raise ValueError(f"PruningPlan.layers: layer index {layers[0]} is negative")

    # ----- queries -------------------------------------------------------------------------------------------------
    def is_empty(self) -> bool:
        return not (self.heads or self.neurons or self.layers or self.channels)

    def num_channels(self) -> int:
        return sum(len(v) for v in self.channels.values())

    def num_heads(self) -> int:
        return sum(len(v) for v in self.heads.values())

    def num_neurons(self) -> int:
        return sum(len(v) for v in self.neurons.values())

    def validate(self, model: nn.Module) -> None:
        """Check every index against `model`'s current structure.

        Raises:
            ValueError: naming the layer and the offending index (out of range for this model).
        """
        from .arch import get_adapter, unwrap_model

        model = unwrap_model(model)
        adapter = get_adapter(model)
        if self.channels or getattr(adapter, "has_channels", False):
            from .arch.channels import validate_channel_plan

            validate_channel_plan(self, model)
            return self._check_structure(model)
        layers = adapter.layers(model)
        n_layers = len(layers)
        for layer in self.layers:
            if layer >= n_layers:
                raise ValueError(f"PruningPlan.layers: layer {layer} is out of range (model has {n_layers} layers)")
        for name, mapping, size_of in (
            ("heads", self.heads, lambda blk: adapter.num_heads(model, blk)),
            ("neurons", self.neurons, adapter.intermediate_size),
        ):
            for layer, indices in mapping.items():
                if layer >= n_layers:
                    raise ValueError(
                        f"PruningPlan.{name}: layer {layer} is out of range (model has {n_layers} layers)"
                    )
                size = size_of(layers[layer])
                if indices[-1] >= size:
                    raise ValueError(
                        f"PruningPlan.{name}: layer {layer} index {indices[-1]} is out of range "
                        f"(layer {layer} has {size} {name}); was this plan made for a different model?"
                    )
        self._check_structure(model)

    def _check_structure(self, model: nn.Module) -> None:
        expected = self.meta.get("model_structure")
        if expected is not None:
            from .structure import model_structure

            actual = model_structure(model)
            if actual != expected:
                raise ValueError(
                    "PruningPlan was made for a model with structure "
                    f"{_short(expected)}, but this model has {_short(actual)}"
                )

    # ----- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return {
            "heads": {str(k): list(v) for k, v in sorted(self.heads.items())},
            "neurons": {str(k): list(v) for k, v in sorted(self.neurons.items())},
            "layers": list(self.layers),
            **({"channels": {k: list(v) for k, v in self.channels.items()}} if self.channels else {}),
            "meta": self.meta,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        unknown = set(data) - {"heads", "neurons", "layers", "channels", "meta"}
        if unknown:
            raise ValueError(f"PruningPlan: unknown key {min(unknown)!r} "
                             "(expected heads, neurons, layers, channels, meta)")
        return cls(heads=data.get("heads") or {}, neurons=data.get("neurons") or {}, layers=data.get("layers") or [],
                   meta=data.get("meta") or {}, channels=data.get("channels") or {})

    def to_json(self, path: str | Path | None = None, indent: int | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=indent)
        if path is not None:
            write_atomic(path, text)
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> PruningPlan:
        text = str(text_or_path)
        if not text.lstrip().startswith("{"):
            text = Path(text_or_path).read_text()
        return cls.from_dict(json.loads(text))


def _short(structure: dict) -> str:
    if "channels" in structure:
        return f"channel groups {structure['channels']}"
    return f"{structure.get('num_layers')} layers, heads={structure.get('heads')}, ffn={structure.get('ffn')}"
