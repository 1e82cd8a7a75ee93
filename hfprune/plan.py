"""`PruningPlan`: the units to remove, per unit kind, indexed as the model is now."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from .arch import get_adapter, unwrap_model
from .io.atomic import write_atomic
from .structure import model_structure
from .units import get_kind, kind_names, kinds_of, supported_kind


class PruningPlan:
    """The units to remove from a model, indexed as the model is *now* (before this plan is applied).

    One entry per registered unit kind (`hfprune.units`), each normalised when set (sorted, unique, non-negative
    indices; a bad value raises naming the kind, the layer or group, and the index). The four kinds of today are
    keyword arguments and attributes; every registered kind is accepted the same way (`PruningPlan(**{kind: ...})`,
    `plan.<kind>`).

    Args:
        heads (`dict[int, list[int]]`): attention heads to remove, per layer (query heads for GQA models).
        neurons (`dict[int, list[int]]`): FFN neurons (intermediate channels) to remove, per layer.
        layers (`list[int]`): whole blocks to remove.
        meta (`dict`): free-form provenance (criterion, ratio, scores file ...), kept in the JSON.
        channels (`dict[str, list[int]]`): CNN channels to remove, per channel group (the group's name from
            `hfprune.channel_groups`, e.g. `"resnet.encoder.stages.0.layers.0.layer.0.convolution"`).

    Example:
        ```python
        >>> plan = PruningPlan(heads={0: [1, 3]}, neurons={1: [0, 5, 9]}, layers=[2])
        >>> PruningPlan.from_json(plan.to_json()) == plan
        True
        ```
    """

    def __init__(self, heads=None, neurons=None, layers=None, meta: dict | None = None, channels=None, **units):
        object.__setattr__(self, "units", {name: get_kind(name).empty() for name in kind_names()})
        object.__setattr__(self, "meta", meta if meta is not None else {})
        given = {"heads": heads, "neurons": neurons, "layers": layers, "channels": channels, **units}
        for name, value in given.items():
            if name not in self.units:
                raise TypeError(f"PruningPlan: unknown unit kind {name!r} (registered: {', '.join(self.units)})")
            setattr(self, name, value)

    def __getattr__(self, name: str):
        units = self.__dict__.get("units", {})
        if name in units:
            return units[name]
        raise AttributeError(f"'PruningPlan' object has no attribute {name!r}")

    def __setattr__(self, name: str, value) -> None:
        if name in self.units:
            self.units[name] = get_kind(name).normalise(value)
        else:
            object.__setattr__(self, name, value)

    def __eq__(self, other) -> bool:
        if not isinstance(other, PruningPlan):
            return NotImplemented
        return self.units == other.units and self.meta == other.meta

    def __repr__(self) -> str:
        parts = [f"{k}={v!r}" for k, v in self.units.items() if v or get_kind(k).listed_when_empty]
        return f"PruningPlan({', '.join([*parts, f'meta={self.meta!r}'])})"

    # ----- queries -------------------------------------------------------------------------------------------------
    def kinds(self) -> list[str]:
        """The unit kinds this plan removes something of."""
        return [name for name, entry in self.units.items() if entry]

    def is_empty(self) -> bool:
        return not self.kinds()

    def count(self, kind: str) -> int:
        """How many units of `kind` the plan removes."""
        return get_kind(kind).count(self.units[kind])

    def num_channels(self) -> int:
        return self.count("channels")

    def num_heads(self) -> int:
        return self.count("heads")

    def num_neurons(self) -> int:
        return self.count("neurons")

    def validate(self, model: nn.Module) -> None:
        """Check every index against `model`'s current structure, before anything changes.

        Raises:
            ValueError: a unit kind the model's family does not have, or an index out of range for this model
                (naming the kind, the layer or group, and the index); a plan made for another structure.
        """
        model = unwrap_model(model)
        adapter = get_adapter(model)
        for name in self.kinds():
            try:
                supported_kind(name, adapter, model)
            except ValueError as err:
                raise ValueError(f"PruningPlan.{name}: {err}") from None
        expected = self.meta.get("model_structure")
        if expected is not None:
            difference = structure_difference(expected, model_structure(model))
            if difference:
                raise ValueError(f"PruningPlan was made for a model with structure other than this "
                                 f"{type(model).__name__}'s: {difference} (applied twice, or to another model? select "
                                 "again on this model)")
        for kind in kinds_of(adapter):
            kind.validate(model, adapter, self)

    # ----- serialisation -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        out = {name: get_kind(name).to_json(entry) for name, entry in self.units.items()
               if entry or get_kind(name).listed_when_empty}
        return {**out, "meta": self.meta}

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        known = (*kind_names(), "meta")
        unknown = set(data) - set(known)
        if unknown:
            raise ValueError(f"PruningPlan: unknown key {min(unknown)!r} (expected {', '.join(known)})")
        return cls(**{k: v for k, v in data.items() if v is not None})

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


def structure_difference(expected: dict, actual: dict) -> str:
    """The first difference between a plan's structure and a model's, as text ("" when it fits).

    `expected` may be partial (a plan selected from bare scores knows only what they imply, e.g. the number of
    layers): only its keys are compared, and of a mapping (channel groups) only its entries.
    """
    for key, want in expected.items():
        have = actual.get(key)
        if isinstance(want, dict) and isinstance(have, dict):
            for name, size in want.items():
                if have.get(name) != size:
                    return f"{key}[{name!r}] was {size}, the model has {have.get(name)}"
        elif have != want:
            if isinstance(want, list) and isinstance(have, list) and len(want) == len(have):
                layer = next(i for i, (a, b) in enumerate(zip(want, have)) if a != b)
                return f"{key} of layer {layer} was {want[layer]}, the model has {have[layer]} ({want} vs {have})"
            return f"{key} was {want!r}, the model has {have!r}"
    return ""


def expect_plan(caller: str, plan) -> None:
    """`TypeError` unless `plan` is a `PruningPlan` (saying how to get one from a dict or JSON)."""
    if not isinstance(plan, PruningPlan):
        hint = "; a dict or JSON text converts with PruningPlan.from_dict / from_json" \
            if isinstance(plan, (dict, str)) else ""
        raise TypeError(f"{caller}: plan must be a hfprune.PruningPlan (e.g. PruningPlan(heads={{0: [1]}}) or "
                        f"the result of select_heads / select_channels ...), got {type(plan).__name__}{hint}")
