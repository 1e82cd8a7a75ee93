"""The unit-kind registry, by name. `hfprune.units` registers the kinds it lists (`KINDS`); `Gates` and the lookups
read the registry here, below every kind module."""

from __future__ import annotations

from torch import nn

from ..arch import adapters_for
from .base import UnitKind

_KINDS: dict[str, UnitKind] = {}


def register(kind_cls: type[UnitKind]) -> type[UnitKind]:
    """Class decorator: make `kind_cls` the unit kind named `kind_cls.name` (its plan key)."""
    _KINDS[kind_cls.name] = kind_cls()
    return kind_cls


def kind_names() -> tuple[str, ...]:
    """Every registered unit kind, in registration order (the order of a plan's JSON keys)."""
    return tuple(_KINDS)


def get_kind(name: str) -> UnitKind:
    """The registered kind `name`; a `KeyError` naming the registered ones otherwise."""
    if name not in _KINDS:
        raise KeyError(f"no unit kind {name!r}; the registered kinds are {', '.join(_KINDS)}")
    return _KINDS[name]


def kinds_of(adapter) -> list[UnitKind]:
    """The kinds a family adapter supports, in its `unit_kinds` order (the order of `model_structure`)."""
    return [_KINDS[name] for name in adapter.unit_kinds]


def supported_kind(name: str, adapter, model: nn.Module) -> UnitKind:
    """The kind `name` if the model's family has it; else a `ValueError` saying what the model is and has."""
    kind = get_kind(name)
    if name not in adapter.unit_kinds:
        nouns = ", ".join(_KINDS[k].noun for k in adapter.unit_kinds)
        raise ValueError(f"{type(model).__name__} is {adapter.family} (model_type={model.config.model_type!r}): it "
                         f"has no {kind.noun} (it has {nouns}; {name} pruning supports "
                         f"{', '.join(adapters_for(name))})")
    return kind
