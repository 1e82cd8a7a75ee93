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


def check_not_offloaded(model: nn.Module, caller: str) -> None:
    """Refuse a model whose weights are not all in memory: loaded with a `device_map` that offloads to CPU or disk
    (accelerate's hooks hold the weights and leave meta tensors in the model), or built on the meta device.

    The in-memory entry points (`sparsify`, the scorers, `prune`) change or read every weight where it sits; such a
    model is pruned from its checkpoint instead, one block at a time (`hfprune.stream`, `hfprune prune --stream`).

    Raises:
        ValueError: naming the first offloaded module or meta tensor and pointing to `--stream`.
    """
    where = None
    for name, module in model.named_modules():
        hook = getattr(module, "_hf_hook", None)
        if hook is not None and _offloads(hook):
            where = f"module {name or type(model).__name__!r} has an accelerate offload hook"
            break
    if where is None:
        meta = next((name for name, p in model.named_parameters() if p.is_meta), None)
        if meta is not None:
            where = f"parameter {meta!r} is on the meta device"
    if where is not None:
        raise ValueError(f"{caller}: the model's weights are not all in memory ({where}: loaded with a device_map "
                         "that offloads, or built on the meta device); prune its checkpoint block by block instead: "
                         "`hfprune prune --task causal-lm --model DIR --stream ...` or hfprune.stream."
                         "sparsify_checkpoint / prune_checkpoint")


def _offloads(hook) -> bool:
    """Whether an accelerate hook (or one of a SequentialHook's) keeps weights off the model (offload / weights map)."""
    hooks = getattr(hook, "hooks", None) or [hook]
    return any(getattr(h, "offload", False) or getattr(h, "weights_map", None) is not None for h in hooks)


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
