"""The adapter registry, by `config.model_type`: a leaf module, so that a family module can register itself
(`from .registry import register`) without importing the `hfprune.arch` package that imports it."""

from __future__ import annotations

from .base import ArchAdapter

_REGISTRY: dict[str, ArchAdapter] = {}


def register(adapter_cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: make `adapter_cls` serve every `model_type` it lists."""
    instance = adapter_cls()
    for model_type in adapter_cls.model_types:
        _REGISTRY[model_type] = instance
    return adapter_cls
