"""Model-family adapters, registered by `config.model_type`. Adding a family = one module here + its tests."""

from __future__ import annotations

from torch import nn

from .base import ArchAdapter, ProjSegment
from .registry import _REGISTRY, register


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def get_adapter(model_or_config) -> ArchAdapter:
    """Return the adapter for a model (or its config).

    Raises:
        ValueError: the model family is not supported; the message lists the supported `model_type`s.
    """
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"hfprune does not support model_type={model_type!r}. Supported: {', '.join(supported_model_types())}."
        )
    return _REGISTRY[model_type]


# Importing the family modules registers them (each imports `register` from .registry, not from this package).
from . import bert, distilbert, gpt2, llama, vit  # noqa: E402, F401

__all__ = ["ArchAdapter", "ProjSegment", "get_adapter", "register", "supported_model_types"]
