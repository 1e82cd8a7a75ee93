"""Where a saved model is (a local folder or a Hub snapshot) and reading its safetensors files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .names import WEIGHTS_INDEX_NAME, WEIGHTS_NAME

# Files a loader may need; nothing else is downloaded for a Hub id.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.md"]
_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only")
# Weight files that are pickle archives (loading one can run code).
_PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")


def resolve_folder(path_or_id: str | os.PathLike, **hub_kwargs) -> Path:
    """A local folder for `path_or_id`: the folder itself, or a Hub snapshot of the files a loader needs.

    Args:
        path_or_id (`str` or `os.PathLike`): a local folder or a Hub repo id.
        hub_kwargs: `revision`, `token`, `cache_dir`, `local_files_only` (others are ignored).

    Raises:
        FileNotFoundError: neither a local folder nor a Hub repo that can be fetched now (offline mode, no network,
            no such repo or no access); the message names the repo id and suggests a local path.
    """
    path = Path(path_or_id)
    if path.is_dir():
        return path
    if path.exists():
        raise ValueError(f"{path} is a file; load_pruned expects a folder saved by save_pretrained or a Hub id")
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError, RepositoryNotFoundError

    repo = str(path_or_id)
    try:
        return Path(snapshot_download(repo, allow_patterns=_HUB_PATTERNS,
                                      **{k: v for k, v in hub_kwargs.items() if k in _HUB_KEYS}))
    except HFValidationError:
        raise FileNotFoundError(f"{repo!r} is not a local folder, nor a Hub repo id of the form 'user/name'") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"{repo!r} is not a local folder, and the Hub has no repo {repo!r} that this token "
                                "can read (private repos need token=...)") from None
    except LocalEntryNotFoundError as err:
        offline = constants.is_offline_mode() or hub_kwargs.get("local_files_only")
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else f"cannot reach {constants.ENDPOINT}"
        raise FileNotFoundError(
            f"{repo!r} is not a local folder, and the Hub repo {repo!r} cannot be downloaded ({why}) nor is it in the "
            "local cache; pass the path of a folder saved by save_pretrained, or go online once to cache it"
        ) from err


def read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of a (possibly sharded) safetensors checkpoint. Pickle checkpoints are refused.

    Raises:
        FileNotFoundError: no safetensors weights (a pickle-only folder is named as such), or a shard the index
            lists is missing.
        ValueError: the index names a shard outside the folder, the index is not valid JSON, or a file is not a
            readable safetensors file (corrupt, truncated); the message names the file (and the index).
    """
    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_NAME
    if index.exists():
        shards = sorted(set(_weight_map(index).values()))
        files = [file_inside(folder, shard, f"shard {shard!r} listed in {index}") for shard in shards]
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are missing: {missing[:3]}")
    elif (folder / WEIGHTS_NAME).exists():
        files = [folder / WEIGHTS_NAME]
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder} (found: {found}); hfprune never loads pickle")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(read_safetensors_file(file))
    return state


def require_safetensors(path_or_id: str | os.PathLike) -> None:
    """Refuse a local model folder whose weights are only pickle (`pytorch_model.bin`, `*.pt`, ...).

    Call it before `from_pretrained(path, use_safetensors=True)`: transformers would refuse too, but this error
    names the pickle file. A Hub id (not a local folder) passes; `use_safetensors=True` guards that download.

    Raises:
        FileNotFoundError: the folder has pickle weights and no safetensors; the message names the pickle file.

    Example:
        ```py
        >>> hfprune.io.require_safetensors(path)
        >>> model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
        ```
    """
    folder = Path(path_or_id)
    if not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = sorted(p.name for pattern in _PICKLE_PATTERNS for p in folder.glob(pattern))
    if pickles:
        raise FileNotFoundError(f"{folder / pickles[0]} is a pickle checkpoint and {folder} has no safetensors "
                                "weights; hfprune never loads pickle (it can run code), it loads safetensors weights "
                                "only. Convert it once with transformers: from_pretrained(..., use_safetensors=False) "
                                "in a trusted session, "
                                "then save_pretrained(folder) writes model.safetensors")


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{index}: not a safetensors index (a JSON object with a 'weight_map'): {err}") from None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index}: 'weight_map' must map tensor names to shard file names")
    return weight_map


def file_inside(folder: Path, name: str, what: str) -> Path:
    """`folder / name`, refused unless it stays inside `folder` (no absolute name, no `..`, no link out).

    Raises:
        ValueError: names `what` (e.g. the shard and the index file that lists it) and the folder.
    """
    path = Path(folder) / name
    root = Path(folder).resolve()
    if Path(name).is_absolute() or not path.resolve().is_relative_to(root):
        raise ValueError(f"{what} points outside the folder {folder}; hfprune reads only files inside it")
    return path


def read_safetensors_file(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, on the CPU.

    Raises:
        ValueError: the file is not a readable safetensors file (corrupt or truncated); the message names it.
    """
    try:
        with safe_open(str(file), framework="pt") as handle:
            return {key: handle.get_tensor(key) for key in handle.keys()}
    except SafetensorError as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err}); it is corrupt or truncated, save or "
                         "download it again") from None


def safetensors_sizes(file: str | os.PathLike) -> dict[str, int]:
    """Bytes of every tensor in a safetensors file, from its header (shape and dtype), without reading the data."""
    sizes = {}
    try:
        with safe_open(str(file), framework="pt") as handle:
            for key in handle.keys():
                piece = handle.get_slice(key)
                shape = piece.get_shape()
                # An empty slice carries the torch dtype; a 0-d tensor cannot be sliced, and is one element anyway.
                itemsize = piece[:0].element_size() if shape else handle.get_tensor(key).element_size()
                sizes[key] = math.prod(shape) * itemsize
    except SafetensorError as err:
        raise ValueError(f"{file}: not a readable safetensors file ({err}); it is corrupt or truncated") from None
    return sizes
