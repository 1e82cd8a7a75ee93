"""Model-family adapters, registered by `config.model_type`. Adding a family = one module here + its tests."""

from __future__ import annotations

from torch import nn

from .base import ArchAdapter, ProjSegment
from .registry import _REGISTRY, register


def supported_model_types() -> list[str]:
    return sorted(_REGISTRY)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside the wrappers of distributed training and compilation.

    `torch.nn.parallel.DistributedDataParallel` / `DataParallel` (what `accelerate.prepare` returns on several
    processes) and DeepSpeed keep the model in `.module`; `torch.compile` keeps it in `._orig_mod`. None of them
    forwards `.config` (or, for `torch.compile`, the module names), so every hfprune entry point that takes a model
    unwraps it here first (repeatedly: a compiled DDP model is two wrappers). Any other module is returned as is.

    Example:
        ```python
        >>> ddp = torch.nn.parallel.DistributedDataParallel(model)
        >>> hfprune.arch.unwrap_model(ddp) is model
        True
        ```
    """
    while True:
        # torch.compile's wrapper forwards attribute reads (`.config` included) to the model, but its
        # `named_modules()` / state dict carry an `_orig_mod.` prefix: always unwrap it.
        inner = getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module) and not hasattr(model, "config"):
            inner = getattr(model, "module", None)
        if not isinstance(inner, nn.Module) or inner is model:
            return model
        model = inner


def get_adapter(model_or_config) -> ArchAdapter:
    """Return the adapter for a model (or its config); a wrapped model (DDP, `torch.compile`) is unwrapped.

    Raises:
        ValueError: the model family is not supported; the message lists the supported `model_type`s.
    """
    if isinstance(model_or_config, nn.Module):
        model_or_config = unwrap_model(model_or_config)
    config = model_or_config.config if isinstance(model_or_config, nn.Module) else model_or_config
    model_type = getattr(config, "model_type", None)
    if model_type not in _REGISTRY:
        raise ValueError(
            f"hfprune does not support model_type={model_type!r}. Supported: {', '.join(supported_model_types())}."
        )
    return _REGISTRY[model_type]


# Importing the family modules registers them (each imports `register` from .registry, not from this package).
from . import bert, convnext, distilbert, efficientnet, gpt2, llama, mobilenet_v2, regnet, resnet, vit  # noqa: E402, F401  # noqa: E402, F401  (CNNs: channel groups)

__all__ = ["ArchAdapter", "ProjSegment", "get_adapter", "register", "supported_model_types", "unwrap_model"]
