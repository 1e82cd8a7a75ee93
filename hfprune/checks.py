"""Type checks of the public entry points: a wrong type is a `TypeError` naming the call, the argument and what it
expects, before anything runs (a leaf module: nothing of hfprune)."""

from __future__ import annotations

from torch import nn


def expect(caller: str, name: str, value, types, expected: str, optional: bool = False) -> None:
    """Raise `TypeError` unless `value` is one of `types` (or None when `optional`); bools are never numbers."""
    if value is None and optional:
        return
    numeric = types in (int, float) or (isinstance(types, tuple) and int in types)
    if isinstance(value, types) and not (numeric and isinstance(value, bool)):
        return
    raise TypeError(f"{caller}: {name} must be {expected}, got {type(value).__name__} {_short(value)}")


def expect_model(caller: str, model) -> None:
    """`model` must be a `torch.nn.Module` (a transformers model, or a DDP / accelerate / compiled wrapper of one)."""
    expect(caller, "model", model, nn.Module, "a torch.nn.Module (a transformers PreTrainedModel)")


def _short(value) -> str:
    text = repr(value)
    return f"({text[:60]}...)" if len(text) > 60 else f"({text})"
