"""The on-disk formats `load_pruned` reads, one loader each, chosen by looking at the folder; and `save_pruned`.

Nothing registers itself: `FORMATS` lists every format, in the order they are tried. A format's encoder and decoder
may live with the feature that writes it (`hfprune.sparsity.compressed`); its loader here imports them only when a
folder of that format is loaded, so `import hfprune` stays light and no package must be imported first.

- `hfprune-sparse`: written by `hfprune.save_compressed`; recognised by `hfprune_sparse.json` in the folder.
- `compressed-tensors`: int8 / int4 weights written by `hfprune.export_compressed_tensors` (or llm-compressor, one
  `pack-quantized` group); recognised by `quantization_config.quant_method` in config.json; dequantized to float.
- `hfprune-structured`: written by `save_pruned` / `save_pretrained` after `prune`; the fallback (`config.json` with
  the `hfprune` record, weights in safetensors).

Where `save_pruned` wrote a stand-in family's config (a Llama whose head count `LlamaConfig` refuses, saved under the
Mistral classes: `hfprune.serving.plain`), the loaders give back the class the model was pruned as.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..structure import get_record
from .atomic import atomic_dir, check_output
from .folders import read_safetensors, resolve_folder
from .names import SPARSE_FORMAT, SPARSE_MANIFEST_NAME
from .rebuild import build_model, load_config

_HUB_KWARGS = ("revision", "token", "cache_dir", "local_files_only")


@dataclass(frozen=True)
class DiskFormat:
    """One on-disk format that `load_pruned` reads.

    Args:
        name (`str`): the format's name (as `detect_format` reports it).
        detect (`Callable[[Path], bool]`): whether a local folder holds this format (cheap: looks at file names or
            a small JSON file, never at the weights).
        load (`Callable`): `load(folder, source, dtype, attn_implementation, config_kwargs) -> nn.Module`, the model
            in eval mode on the CPU; `source` is what errors name, `dtype` `None` for "as saved".
    """

    name: str
    detect: Callable[[Path], bool]
    load: Callable[..., nn.Module]


def _is_sparse(folder: Path) -> bool:
    return (folder / SPARSE_MANIFEST_NAME).is_file()


def _load_sparse(folder: Path, source: str, dtype, attn_implementation, config_kwargs: dict) -> nn.Module:
    from ..sparsity.compressed import load_compressed  # the decoder lives with the encoder; imported on use

    return load_compressed(folder, dtype=dtype, attn_implementation=attn_implementation, **config_kwargs)


def _is_compressed_tensors(folder: Path) -> bool:
    from ..serving.compressed_tensors import is_compressed_tensors_folder  # reads config.json only

    return is_compressed_tensors_folder(folder)


def _load_compressed_tensors(folder: Path, source: str, dtype, attn_implementation, config_kwargs: dict) -> nn.Module:
    from ..serving.compressed_tensors import load_compressed_tensors  # needs the optional compressed-tensors package

    return load_compressed_tensors(folder, source, dtype, attn_implementation, config_kwargs)


def _load_structured(folder: Path, source: str, dtype, attn_implementation, config_kwargs: dict) -> nn.Module:
    from ..serving.plain import original_config

    config = original_config(load_config(folder, attn_implementation, **config_kwargs), overrides=config_kwargs)
    if get_record(config) is None:
        raise ValueError(
            f"{source}: config.json has no 'hfprune' record, so this is not a model saved after hfprune.prune "
            "(load an unpruned model with transformers' from_pretrained)"
        )
    state = read_safetensors(folder)  # fails early (and never on pickle) before any model is built
    return build_model(config, state, source, dtype)


# Tried in order; the last one is the fallback. A new format is one entry here (placed before the fallback).
FORMATS: tuple[DiskFormat, ...] = (
    DiskFormat(SPARSE_FORMAT, _is_sparse, _load_sparse),
    DiskFormat("compressed-tensors", _is_compressed_tensors, _load_compressed_tensors),
    DiskFormat("hfprune-structured", lambda folder: True, _load_structured),
)


def detect_format(folder: str | os.PathLike) -> DiskFormat:
    """The format of the local `folder`: the first of `FORMATS` that recognises it.

    Example:
        ```py
        >>> hfprune.io.detect_format("out/sparse90").name
        'hfprune-sparse'
        ```
    """
    folder = Path(folder)
    return next(fmt for fmt in FORMATS if fmt.detect(folder))


def _device_from(device, device_map):
    """One device for the whole model: `device`, or a `device_map` that names a single device ("auto": the GPU if
    there is one). Sharding a pruned model over devices is not supported, and saying so beats ignoring it."""
    if device_map is None:
        return device
    if device is not None:
        raise ValueError("load_pruned: pass either device or device_map, not both")
    if isinstance(device_map, (str, torch.device)):
        if str(device_map) == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return device_map
    raise ValueError(f"load_pruned: device_map={device_map!r} is not supported; use device='cuda' (or 'cpu', 'auto'), "
                     "the whole model goes to one device")


def load_pruned(path_or_id: str | os.PathLike, **from_pretrained_kwargs) -> nn.Module:
    """Load a model saved after `hfprune.prune` or by `hfprune.save_compressed` (local folder or Hub id), rebuilding
    its pruned shapes.

    The format is recognised from the folder (see `FORMATS`); the class is taken from `config.architectures`;
    weights are read only from safetensors.

    Args:
        path_or_id (`str` or `os.PathLike`): a folder written by `save_pretrained` / `save_pruned` /
            `save_compressed`, or a Hub repo id.
        from_pretrained_kwargs: `revision`, `token`, `cache_dir`, `local_files_only` (Hub), `dtype` /
            `torch_dtype` (default and `"auto"`: the dtype it was saved in), `device` (str) or a one-device
            `device_map` ("auto", "cuda", ...), `attn_implementation`, and config overrides (as for `AutoConfig`).

    Returns:
        The pruned model, in eval mode, with the same logits as when it was saved.

    Raises:
        ValueError: the folder carries no hfprune record, or a tensor does not match the recorded structure.

    Example:
        ```py
        >>> model = hfprune.load_pruned("out/pruned")           # or "user/minilm-sst2-pruned"
        ```
    """
    kwargs = dict(from_pretrained_kwargs)
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    device = _device_from(kwargs.pop("device", None), kwargs.pop("device_map", None))
    hub_kwargs = {k: kwargs.pop(k) for k in _HUB_KWARGS if k in kwargs}
    attn_implementation = kwargs.pop("attn_implementation", None)
    folder = resolve_folder(path_or_id, **hub_kwargs)
    fmt = detect_format(folder)
    model = fmt.load(folder, str(path_or_id), None if dtype == "auto" else dtype, attn_implementation, kwargs)
    return model.to(device) if device else model


def save_pruned(model: nn.Module, output_dir: str | os.PathLike, tokenizer=None, overwrite: bool = False,
                **save_kwargs) -> Path:
    """Save `model` (and `tokenizer`) to `output_dir` atomically: written to a temporary folder, then moved.

    An existing `output_dir` is replaced only when an earlier hfprune write made it, or with `overwrite=True`
    (`hfprune.io.atomic_dir`); a file there is refused. Either way nothing is written or removed then.

    Plain `model.save_pretrained(output_dir)` works too; this adds the all-or-nothing write, so an interrupted save
    never leaves a half-written folder behind, refuses non-safetensors serialisation, and writes a plain config
    wherever a stock class can run the pruned shapes: a uniformly pruned Llama whose head count `LlamaConfig`
    refuses (`hidden_size % num_attention_heads != 0`) is written under the Mistral classes, which run the same
    computation (`hfprune.serving.plain`). The log and the model card (README.md) say which class the folder loads
    as with plain `from_pretrained`, and why; `load_pruned` returns the class the model was pruned as.

    Example:
        ```py
        >>> hfprune.save_pruned(hfprune.prune(model, plan), "out/pruned", tokenizer=tokenizer)
        ```
    """
    if save_kwargs.get("safe_serialization") is False:
        raise ValueError("hfprune saves weights only as safetensors; drop safe_serialization=False")
    output_dir = check_output(output_dir, overwrite)
    from ..serving.plain import model_card

    with atomic_dir(output_dir, overwrite=overwrite) as tmp:
        loads = write_model(model, tmp, tokenizer, label=output_dir, **save_kwargs)
        if not (tmp / "README.md").exists():
            (tmp / "README.md").write_text(model_card(model, loads))
    return output_dir


def write_model(model: nn.Module, folder: Path, tokenizer=None, label=None, **save_kwargs):
    """The model part of `save_pruned`, into a folder being written (the application's writers use it inside their
    own atomic folder): weights and config, a stand-in family's config where that makes the folder load plainly,
    the tokenizer. A GGUF-loaded model (dense floats) loses its loader's quantizer first, or save_pretrained refuses.

    Returns:
        `hfprune.serving.plain.LoadsAs`: which class plain `from_pretrained` builds, and why.
    """
    from ..dequantized import detach_gguf_quantizer
    from ..serving.plain import write_plain_config

    detach_gguf_quantizer(model)
    model.save_pretrained(folder, **save_kwargs)
    loads = write_plain_config(model, folder, label=label)  # a stand-in family's config where needed + log
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return loads
