"""Compressed export of sparse models: a bitmask plus the packed non-zero values, optionally int8 per channel.

The idea is the storage half of Deep Compression (Han et al. 2016, "Deep Compression: Compressing Deep Neural
Networks with Pruning, Trained Quantization and Huffman Coding"), in a simple, exact and framework-native layout:

* one safetensors file; for every sparse tensor `K`: `K::mask` (uint8, `numpy.packbits` of the flattened non-zero
  pattern, little bit order), `K::values` (its non-zeros in row-major order, in the tensor's dtype) or, with
  `int8=True`, `K::values` as int8 plus `K::scales` (float32, one symmetric scale per output channel);
* every other tensor stored as-is under its own name (so it costs what it costs in a dense file);
* `config.json` (with the hfprune structure record, if the model was also structurally pruned) and a small JSON
  manifest, `hfprune_sparse.json`, which marks the folder for `hfprune.load_pruned` (`hfprune.io.formats` lists
  the format and imports this module when it loads such a folder).

At 90% sparsity a float32 tensor costs 1/32 (mask) + 0.1 (values) = 0.13x its dense bytes, 0.06x with int8 values.
"""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from ..dequantized import detach_gguf_quantizer
from ..io.atomic import atomic_dir, check_output
from ..io.folders import file_inside, read_safetensors_file, safetensors_sizes
from ..io.names import SPARSE_FORMAT as FORMAT
from ..io.names import SPARSE_MANIFEST_NAME as MANIFEST_NAME
from ..io.names import SPARSE_WEIGHTS_NAME as WEIGHTS_NAME
from ..io.rebuild import build_model, load_config
from .targets import is_conv1d

VERSION = 1
# The older name of `hfprune.io.safetensors_sizes` (tests and benchmarks read tensor sizes through it).
_safetensors_sizes = safetensors_sizes


def _channel_dims(model: nn.Module) -> dict[str, int]:
    """State-dict key -> output-channel dim, where it is not 0 (Conv1D keeps its weight as (in, out))."""
    return {f"{name}.weight": 1 for name, module in model.named_modules() if is_conv1d(module)}


def _unique_state(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The state dict with tied tensors kept once (safetensors refuses shared storage; loading re-ties them), and
    every state-dict key -> the key it is stored under (itself, or the first key of its tied group)."""
    seen: dict[tuple, str] = {}
    state, alias = {}, {}
    for key, tensor in model.state_dict().items():
        ident = (tensor.data_ptr(), tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype)
        if tensor.numel() and ident in seen:
            alias[key] = seen[ident]
            continue
        seen[ident] = key
        alias[key] = key
        state[key] = tensor.detach().cpu().contiguous()
    return state, alias


def _worth_encoding(tensor: torch.Tensor, min_sparsity: float) -> bool:
    if not tensor.is_floating_point() or tensor.dim() < 2 or tensor.numel() == 0:
        return False  # an empty tensor (a sub-block pruned away entirely) has nothing to encode
    numel, nnz = tensor.numel(), int(torch.count_nonzero(tensor))
    if 1.0 - nnz / numel < min_sparsity:
        return False
    return (numel + 7) // 8 + nnz * tensor.element_size() < numel * tensor.element_size()


def _encode(key: str, tensor: torch.Tensor, int8: bool, channel_dim: int) -> tuple[dict, dict]:
    keep = tensor != 0
    mask = torch.from_numpy(np.packbits(keep.reshape(-1).numpy(), bitorder="little"))
    meta = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."),
            "nnz": int(keep.sum()), "values": "int8" if int8 else "raw"}
    pieces = {f"{key}::mask": mask}
    if not int8:
        pieces[f"{key}::values"] = tensor[keep]
        return pieces, meta
    reduce_dims = [d for d in range(tensor.dim()) if d != channel_dim]
    scales = tensor.detach().float().abs().amax(dim=reduce_dims) / 127.0
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))  # all-zero channel: any scale decodes to 0
    shape = [1] * tensor.dim()
    shape[channel_dim] = -1
    q = torch.round(tensor.float() / scales.view(shape)).clamp_(-127, 127).to(torch.int8)
    pieces[f"{key}::values"] = q[keep]
    pieces[f"{key}::scales"] = scales
    meta["channel_dim"] = channel_dim
    return pieces, meta


def _decode(key: str, meta: dict, pieces: dict[str, torch.Tensor]) -> torch.Tensor:
    shape, numel = meta["shape"], int(np.prod(meta["shape"], dtype=np.int64))
    dtype = getattr(torch, meta["dtype"])
    keep = torch.from_numpy(np.unpackbits(pieces[f"{key}::mask"].numpy(), count=numel, bitorder="little")
                            .astype(bool))
    values = pieces[f"{key}::values"]
    if values.numel() != int(keep.sum()) or values.numel() != meta["nnz"]:
        raise ValueError(f"compressed tensor {key!r}: mask has {int(keep.sum())} non-zeros but {values.numel()} values "
                         f"are stored (manifest: {meta['nnz']}); the file is damaged")
    if meta["values"] == "raw":
        dense = torch.zeros(numel, dtype=dtype)
        dense[keep] = values
        return dense.view(shape)
    dense = torch.zeros(numel, dtype=torch.float32)
    dense[keep] = values.float()
    view = [1] * len(shape)
    view[meta["channel_dim"]] = -1
    return (dense.view(shape) * pieces[f"{key}::scales"].view(view)).to(dtype)


def save_compressed(model: nn.Module, path: str | os.PathLike, int8: bool = False, tokenizer=None,
                    min_sparsity: float = 0.05, tensors: list[str] | None = None, overwrite: bool = False) -> Path:
    """Save a sparse model as bitmask + packed non-zeros (optionally int8 per output channel), atomically.

    A tensor is stored sparse when it is floating point, at least 2-D, has at least `min_sparsity` zeros, and the
    encoding is smaller than the dense bytes; every other tensor is stored as-is. Active masks need not be folded
    first: the stored non-zero pattern is the weights' own. `hfprune.load_pruned(path)` reads the folder back.

    Args:
        model (`nn.Module`): a transformers model (structurally pruned ones too).
        path (`str` or `os.PathLike`): output folder, replaced as a whole once complete; an existing folder only
            when an earlier hfprune write made it (or with `overwrite=True`), a file never.
        int8 (`bool`, defaults to `False`): store the non-zeros of sparse tensors as int8 with one symmetric float32
            scale per output channel (lossy: error <= scale / 2 per weight). Dense tensors stay as they are.
        tokenizer (*optional*): saved alongside.
        min_sparsity (`float`, defaults to 0.05): tensors with fewer zeros than this stay dense.
        tensors (`list[str]`, *optional*): state-dict keys to store sparse (e.g. `handle.keys()`); default: every
            tensor that qualifies.
        overwrite (`bool`, defaults to `False`): replace an existing folder that hfprune did not write.

    Returns:
        `Path`: the folder.

    Raises:
        FileExistsError: `path` is a file, or a folder hfprune did not write (without `overwrite=True`).

    Example:
        ```python
        >>> handle = hfprune.sparsify(model, 0.9)
        >>> hfprune.save_compressed(model, "out/sparse90", int8=True)
        >>> hfprune.sparsity.compressed_stats("out/sparse90")["sparse_ratio"]    # ~0.06
        ```
    """
    if not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity={min_sparsity} is outside [0, 1]")
    check_output(path, overwrite)  # before any work
    detach_gguf_quantizer(model)  # its config must not claim a GGUF quantization the stored weights lack
    state, alias = _unique_state(model)
    if tensors is not None:
        unknown = [k for k in tensors if k not in alias]
        if unknown:
            raise ValueError(f"tensors {unknown[:5]} are not in the model's state dict (keys look like "
                             f"{list(state)[:3]})")
        chosen = {alias[k] for k in tensors}  # a tied weight is stored once, under its first name
    else:
        chosen = {k for k, t in state.items() if _worth_encoding(t, min_sparsity)}
    channel_dims = _channel_dims(model)
    stored, manifest_tensors = {}, {}
    for key, tensor in state.items():
        if key in chosen and tensor.numel():
            pieces, meta = _encode(key, tensor, int8, channel_dims.get(key, 0))
            stored.update(pieces)
            manifest_tensors[key] = meta
        else:
            stored[key] = tensor
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]  # what save_pretrained records; the loader rebuilds from it
    if isinstance(getattr(model, "dtype", None), torch.dtype):
        config.dtype = str(model.dtype).removeprefix("torch.")  # as save_pretrained: a bf16 model reloads as bf16
    manifest = {"format": FORMAT, "version": VERSION, "weights": WEIGHTS_NAME, "int8": bool(int8),
                "tensors": manifest_tensors}

    path = Path(path)
    with atomic_dir(path, overwrite=overwrite) as tmp:
        save_file(stored, str(tmp / WEIGHTS_NAME), metadata={"format": "pt", "hfprune": FORMAT})
        config.save_pretrained(tmp)
        (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return path


def _read_manifest(folder: Path) -> dict:
    manifest = json.loads((folder / MANIFEST_NAME).read_text())
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise ValueError(f"{folder / MANIFEST_NAME}: format {manifest.get('format')!r} version "
                         f"{manifest.get('version')!r} is not {FORMAT!r} version {VERSION}")
    return manifest


def load_compressed(folder: str | os.PathLike, dtype=None, attn_implementation: str | None = None,
                    **config_kwargs) -> nn.Module | None:
    """Rebuild a model saved by `save_compressed`; `None` if `folder` is not such a folder.

    `hfprune.load_pruned(folder)` calls it for such folders (the `hfprune-sparse` entry of `hfprune.io.FORMATS`).

    Args:
        folder (`str` or `os.PathLike`): the folder.
        dtype (`torch.dtype` or `str`, *optional*): cast the loaded model (default: the dtype it was saved in).
        attn_implementation (`str`, *optional*): the attention implementation to build the model with.
        config_kwargs: overrides passed to `AutoConfig.from_pretrained`.

    Returns:
        The model in eval mode (dense weights with exact zeros), or `None`.
    """
    folder = Path(folder)
    if not (folder / MANIFEST_NAME).is_file():
        return None
    state = read_compressed_state(folder)
    config = load_config(folder, attn_implementation, **config_kwargs)
    # The stored names are the model's own (save_compressed writes model.state_dict()), so no renaming.
    return build_model(config, state, str(folder), dtype, checkpoint_names=False)


def _weights_file(folder: Path, manifest: dict) -> Path:
    """The weights file the manifest names, inside the folder."""
    name = manifest["weights"]
    return file_inside(folder, name, f"weights file {name!r} named in {folder / MANIFEST_NAME}")


def read_compressed_state(folder: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The dense state dict of a `save_compressed` folder (sparse tensors decoded), under the model's own names."""
    folder = Path(folder)
    manifest = _read_manifest(folder)
    raw = read_safetensors_file(_weights_file(folder, manifest))
    state = {k: v for k, v in raw.items() if "::" not in k}
    for key, meta in manifest["tensors"].items():
        state[key] = _decode(key, meta, raw)
    return state


def compressed_stats(folder: str | os.PathLike) -> dict[str, float]:
    """Byte counts of a compressed folder.

    Returns:
        `dict`: `folder_bytes` (all files), `sparse_tensors` (count), `sparse_stored_bytes` (mask + values + scales
        of the sparse tensors), `sparse_dense_bytes` (what those tensors take dense, in their dtype),
        `sparse_ratio` (stored / dense), `other_bytes` (tensors stored as-is).
    """
    folder = Path(folder)
    manifest = _read_manifest(folder)
    sizes = safetensors_sizes(_weights_file(folder, manifest))
    sparse_stored = sum(n for k, n in sizes.items() if "::" in k)
    sparse_dense = sum(int(np.prod(m["shape"], dtype=np.int64)) * getattr(torch, m["dtype"]).itemsize
                       for m in manifest["tensors"].values())
    return {
        "folder_bytes": sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()),
        "sparse_tensors": len(manifest["tensors"]),
        "sparse_stored_bytes": sparse_stored,
        "sparse_dense_bytes": sparse_dense,
        "sparse_ratio": sparse_stored / sparse_dense if sparse_dense else float("nan"),
        "other_bytes": sum(n for k, n in sizes.items() if "::" not in k),
    }
