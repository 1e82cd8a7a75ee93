"""Model-family adapters, registered by `config.model_type`. Adding a family = one module here + its tests."""

from __future__ import annotations

from torch import nn

from .base import ArchAdapter, ProjSegment

_REGISTRY: dict[str, ArchAdapter] = {}


def register(adapter_cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: make `adapter_cls` serve every `model_type` it lists."""
    instance = adapter_cls()
    for model_type in adapter_cls.model_types:
        _REGISTRY[model_type] = instance
    return adapter_cls


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


# Importing the family modules registers them.
from . import bert, distilbert, gpt2, llama, vit  # noqa: E402, F401  (registration needs register() above)
from . import convnext, efficientnet, mobilenet_v2, regnet, resnet  # noqa: E402, F401  (CNNs: channel groups)

__all__ = ["ArchAdapter", "ProjSegment", "get_adapter", "register", "supported_model_types"]
