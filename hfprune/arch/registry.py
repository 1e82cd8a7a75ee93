"""The adapter registry, by `config.model_type`, and the lookup: a leaf module, so that a family module can register
itself (`from .registry import register`) and the unit descriptions can find adapters without importing the
`hfprune.arch` package that imports them all."""

from __future__ import annotations

from torch import nn

from .base import ArchAdapter

_REGISTRY: dict[str, ArchAdapter] = {}


def register(adapter_cls: type[ArchAdapter]) -> type[ArchAdapter]:
    """Class decorator: make `adapter_cls` serve every `model_type` it lists."""
    instance = adapter_cls()
    for model_type in adapter_cls.model_types:
        _REGISTRY[model_type] = instance
    return adapter_cls


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


def adapters_for(kind: str) -> list[str]:
    """The `model_type`s whose family can lose units of `kind` (for error messages)."""
    return sorted(t for t, a in _REGISTRY.items() if kind in a.unit_kinds)
