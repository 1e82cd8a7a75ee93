"""Rebuilding a pruned model from its config and a state dict: what every on-disk format shares once its tensors
are decoded (model class, recorded structure, checkpoint names, strict loading, dtype)."""

from __future__ import annotations

import inspect
import os

import torch
from torch import nn

from ..structure import get_record

# transformers has no public API for the checkpoint -> model key renaming that `from_pretrained` applies (ViT's
# legacy `encoder.layer.N.attention.query` names, ...). These two internals are the ones `from_pretrained` itself
# uses (and PEFT, which transformers says it coordinates changes with); `conversion_internals` checks them, so an
# upgrade that moves them fails with a message naming them instead of loading tensors under the wrong names.
_CONVERSION_INTERNALS = (
    ("transformers.conversion_mapping", "get_model_conversion_mapping", ("model",)),
    ("transformers.core_model_loading", "rename_source_key",
     ("source_key", "weight_renamings", "weight_converters", "base_model_prefix", "meta_state_dict")),
)


def model_class_for(config):
    """The transformers class named first in `config.architectures`."""
    import transformers

    names = getattr(config, "architectures", None) or []
    for name in names:
        cls = getattr(transformers, name, None)
        if cls is not None:
            return cls
    raise ValueError(f"config.architectures={names!r} names no class in transformers; cannot rebuild the model")


def conversion_internals() -> dict:
    """The transformers internals behind `to_model_keys`, checked: `get_model_conversion_mapping`,
    `rename_source_key`, `WeightRenaming`, `WeightConverter`.

    Raises:
        RuntimeError: one is missing or lost a parameter hfprune passes; the message names it and the installed
            transformers version.
    """
    import importlib

    import transformers

    found = {}
    for module_name, name, params in _CONVERSION_INTERNALS:
        try:
            func = getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError):
            raise RuntimeError(_moved(f"{module_name}.{name}", "is gone", transformers.__version__)) from None
        missing = [p for p in params if p not in inspect.signature(func).parameters]
        if missing:
            raise RuntimeError(_moved(f"{module_name}.{name}", f"no longer takes {missing}", transformers.__version__))
        found[name] = func
    try:
        from transformers.core_model_loading import WeightConverter, WeightRenaming
    except ImportError:
        raise RuntimeError(_moved("transformers.core_model_loading.WeightRenaming/WeightConverter", "are gone",
                                  transformers.__version__)) from None
    found.update(WeightRenaming=WeightRenaming, WeightConverter=WeightConverter)
    return found


def _moved(what: str, how: str, version: str) -> str:
    return (f"hfprune maps checkpoint names to model names with the transformers internal {what}, which {how} in the "
            f"installed transformers {version}; hfprune needs an update for this transformers version (or install "
            "the transformers version hfprune was tested with)")


def to_model_keys(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map checkpoint names to the model's own names.

    transformers v5 saves some families under legacy names (ViT: `encoder.layer.N.attention.query`) and renames them
    while loading; we apply the same renamings, through the helpers `from_pretrained` itself uses.

    Raises:
        RuntimeError: those helpers moved in the installed transformers (see `conversion_internals`).
        NotImplementedError: a tensor needs a weight conversion (fusing, splitting), not only a new name.
    """
    from ..arch import get_adapter

    # Per-expert checkpoint tensors of a MoE family -> its fused `[E, ...]` parameters (the adapter knows the names).
    fuse = getattr(get_adapter(model), "fuse_checkpoint", None)
    if fuse is not None:
        state = fuse(state)
    internals = conversion_internals()
    transforms = internals["get_model_conversion_mapping"](model=model)
    renamings = [t for t in transforms if isinstance(t, internals["WeightRenaming"])]
    converters = [t for t in transforms if isinstance(t, internals["WeightConverter"])]
    expected = model.state_dict()
    prefix = getattr(model, "base_model_prefix", None)
    out = {}
    for key, tensor in state.items():
        new_key, converter = internals["rename_source_key"](
            source_key=key, weight_renamings=renamings, weight_converters=converters, base_model_prefix=prefix,
            meta_state_dict=expected,
        )
        if converter is not None:
            raise NotImplementedError(f"tensor {key!r} needs a weight conversion that load_pruned does not support")
        out[new_key] = tensor
    return out


def load_state_strict(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Copy `state` into `model`, refusing any missing, unexpected or shape-mismatched tensor (by name)."""
    expected = model.state_dict()
    for name, tensor in state.items():
        if name not in expected:
            raise ValueError(f"{source}: tensor {name!r} does not exist in the rebuilt {type(model).__name__}")
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise ValueError(
                f"{source}: tensor {name!r} has shape {tuple(tensor.shape)} but the recorded structure expects "
                f"{tuple(expected[name].shape)}; the checkpoint does not match its hfprune record"
            )
    # Tied parameters are saved once; a missing name is fine only if it shares storage with a loaded one.
    owners: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(param), []).append(name)
    missing = [n for n in expected if n not in state]
    persistent_buffers = {n for n, _ in model.named_buffers()}
    for name in missing:
        tied = [o for names in owners.values() if name in names for o in names if o in state]
        if not tied and name not in persistent_buffers:
            raise ValueError(f"{source}: tensor {name!r} is missing from the checkpoint")
    model.load_state_dict(state, strict=False)


def load_config(folder: str | os.PathLike, attn_implementation: str | None = None, **config_kwargs):
    """`AutoConfig.from_pretrained(folder, **config_kwargs)`, with the attention implementation to build with."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(folder, **config_kwargs)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    return config


def build_model(config, state: dict[str, torch.Tensor], source: str, dtype=None,
                checkpoint_names: bool = True) -> nn.Module:
    """The model of `config` with its recorded pruned structure (if any), holding `state`, in eval mode.

    Args:
        config: the saved config (`config.architectures` names the class; `config.hfprune` the structure).
        state (`dict[str, torch.Tensor]`): every tensor (tied ones may appear once).
        source (`str`): what errors name (the path or Hub id the user passed).
        dtype (`torch.dtype` or `str`, *optional*): cast to it; default and `"auto"`: the dtype it was saved in.
        checkpoint_names (`bool`, defaults to `True`): `state` uses the names `save_pretrained` writes, which
            transformers renames while loading (`to_model_keys`); `False`: it already uses the model's own names.
    """
    from transformers.initialization import no_init_weights

    from ..structure import apply_structure

    with no_init_weights():
        model = model_class_for(config)(config)  # weights are overwritten below, so skip their random init
    record = get_record(config)
    if record is not None:
        check_record(model, record, state, source, checkpoint_names)
        apply_structure(model, record)
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # before loading, so a tied tensor saved once is recognised as present
    load_state_strict(model, to_model_keys(model, state) if checkpoint_names else state, source)
    dtype = saved_dtype(config) if dtype is None or dtype == "auto" else dtype
    if dtype is not None:
        model = model.to(dtype=getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    return model.eval()


# Per-layer counts of a record, each with the most a layer of the config can hold and the module whose weight an
# error names. Key/value heads: at most one per query head (pruning inside a GQA group may repeat a shared one).
_COUNTS = (
    ("heads", "attention heads", lambda a, m, b: a.num_heads(m, b), lambda a, b: a.out_proj(b)),
    ("kv_heads", "key/value heads", lambda a, m, b: a.num_heads(m, b), lambda a, b: a.qkv_segments(b)[1].module),
    ("ffn", "FFN neurons", lambda a, m, b: a.intermediate_size(b), lambda a, b: a.ffn_out(b)),
)


def check_record(model: nn.Module, record: dict, state: dict[str, torch.Tensor], source: str,
                 checkpoint_names: bool = True) -> None:
    """Refuse a structure record no checkpoint of this config can hold: a layer keeping more heads, key/value heads
    or FFN neurons than the config builds (or fewer than none), before any reshaping.

    Raises:
        ValueError: names the layer, the count, the tensor and its shape in the checkpoint and unpruned.
    """
    if "channels" in record:  # a CNN's channel-group record: checked where it is applied
        return
    from ..arch import get_adapter

    adapter = get_adapter(model)
    layers = adapter.layers(model)
    for index, (block, spec) in enumerate(zip(layers, record.get("layers") or [])):
        for field, what, built_count, module_of in _COUNTS:
            if field not in spec:  # a family without this unit kind (an MoE family has no FFN neurons)
                continue
            kept, built = int(spec[field]), built_count(adapter, model, block)
            if not 0 <= kept <= built:
                weight = module_of(adapter, block).weight
                name, saved = _saved_shape(model, weight, state, checkpoint_names)
                raise ValueError(
                    f"{source}: the hfprune record keeps {kept} {what} in layer {index}, but a layer of this config "
                    f"holds at most {built}; tensor {name!r} has shape {saved} in the checkpoint "
                    f"({tuple(weight.shape)} unpruned), so the record does not match the weights"
                )


def _saved_shape(model: nn.Module, weight: torch.Tensor, state: dict, checkpoint_names: bool):
    """The model's name of `weight` and the shape the checkpoint holds under it (`None` if absent)."""
    name = next((n for n, p in model.named_parameters() if p is weight), "?")
    named = to_model_keys(model, state) if checkpoint_names else state
    saved = named.get(name)
    return name, None if saved is None else tuple(saved.shape)


def saved_dtype(config):
    """The dtype a model was saved in, as transformers v5's `from_pretrained` uses it (a bf16 model stays bf16)."""
    saved = getattr(config, "dtype", None)
    return saved if saved not in (None, "auto") else None
