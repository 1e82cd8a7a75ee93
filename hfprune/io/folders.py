"""Where a saved model is (a local folder or a Hub snapshot) and reading its safetensors files."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
from safetensors import safe_open

from .names import WEIGHTS_INDEX_NAME, WEIGHTS_NAME

# Files a loader may need; nothing else is downloaded for a Hub id.
_HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.py", "*.md"]
_HUB_KEYS = ("revision", "token", "cache_dir", "local_files_only")


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
    """All tensors of a (possibly sharded) safetensors checkpoint. Pickle checkpoints are refused."""
    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_NAME
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (folder / WEIGHTS_NAME).exists():
        shards = [WEIGHTS_NAME]
    else:
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(f"no {WEIGHTS_NAME} in {folder} (found: {found}); hfprune never loads pickle")
    state: dict[str, torch.Tensor] = {}
    for shard in shards:
        state.update(read_safetensors_file(folder / shard))
    return state


def read_safetensors_file(file: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file, on the CPU."""
    with safe_open(str(file), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def safetensors_sizes(file: str | os.PathLike) -> dict[str, int]:
    """Bytes of every tensor in a safetensors file, from its header (shape and dtype), without reading the data."""
    sizes = {}
    with safe_open(str(file), framework="pt") as handle:
        for key in handle.keys():
            piece = handle.get_slice(key)
            shape = piece.get_shape()
            # An empty slice carries the torch dtype; a 0-d tensor cannot be sliced, and is one element anyway.
            itemsize = piece[:0].element_size() if shape else handle.get_tensor(key).element_size()
            sizes[key] = math.prod(shape) * itemsize
    return sizes
