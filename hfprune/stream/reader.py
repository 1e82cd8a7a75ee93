"""Reading a safetensors checkpoint tensor by tensor, without loading it: the source side of streaming.

`CheckpointReader(folder)` reads the shard headers only (names, dtypes, shapes, byte sizes); `read(names)` opens
the shards those tensors live in (memory-mapped by safetensors), takes the tensors and closes the handles again. A
tensor read may share the file's memory mapping (its pages are read on first use; writing to it never reaches the
file, which tests/test_stream_io.py checks) until it is dropped, so the pages of a 28 GB checkpoint stay in the
resident set only while their block lives.

The reader knows nothing of model families: which tensors form a block is `StreamedModel`'s business (it asks the
family adapter where the layers are).
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open

from ..io.folders import file_inside, require_safetensors
from ..io.names import WEIGHTS_INDEX_NAME, WEIGHTS_NAME

# safetensors' dtype names -> torch dtypes (the ones torch has).
SAFETENSORS_DTYPES = {"BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
           "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
           "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2}
# Files besides the weights that a copy of the checkpoint needs (config, generation settings, tokenizer, processor).
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "tokenizer.model",
              "special_tokens_map.json", "added_tokens.json", "vocab.json", "vocab.txt", "merges.txt",
              "chat_template.jinja", "chat_template.json", "preprocessor_config.json", "processor_config.json")


@dataclass(frozen=True)
class TensorInfo:
    """Where one checkpoint tensor is and what it holds, read from its shard's header."""

    shard: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


class CheckpointReader:
    """A safetensors checkpoint folder (one `model.safetensors`, or shards listed by `model.safetensors.index.json`).

    Args:
        folder (`str` or `os.PathLike`): the checkpoint folder (as `save_pretrained` writes it).

    Attributes:
        folder (`Path`): the folder.
        index_file (`Path` or `None`): the shard index, `None` for a single-file checkpoint.
        info (`dict[str, TensorInfo]`): every tensor by its checkpoint name, in shard order.

    Raises:
        FileNotFoundError: no such folder; a folder without safetensors (a pickle checkpoint is named: hfprune never
            loads pickle); a shard named by the index is missing (the shard and the index are named).
        ValueError: an index without `weight_map`, a shard name that leaves the folder (absolute, `..`, a link out;
            `hfprune.io.folders.file_inside`), a tensor the index puts in a shard that does not hold it, or a dtype
            torch does not have.

    Example:
        ```python
        >>> reader = CheckpointReader("llama-7b")
        >>> reader.read(["model.norm.weight"])["model.norm.weight"].dtype
        torch.bfloat16
        ```
    """

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise FileNotFoundError(f"checkpoint folder {self.folder} does not exist (or is not a folder)")
        self.index_file, shards = self._shards()
        self.info = self._read_headers(shards)

    # ----- layout ---------------------------------------------------------------------------------------------------
    def _shards(self) -> tuple[Path | None, dict[str, list[str] | None]]:
        """The index (if any) and, per shard file name, the tensors the index puts there (`None`: no index)."""
        index = self.folder / WEIGHTS_INDEX_NAME
        if index.is_file():
            weight_map = _weight_map(index)
            shards: dict[str, list[str]] = {}
            for name, shard in weight_map.items():
                shards.setdefault(shard, []).append(name)
            for shard in shards:
                if not file_inside(self.folder, shard, f"shard {shard!r} named in {index}").is_file():
                    raise FileNotFoundError(f"shard {shard!r} named in {index} is missing from {self.folder}")
            return index, shards
        if (self.folder / WEIGHTS_NAME).is_file():
            return None, {WEIGHTS_NAME: None}
        require_safetensors(self.folder)  # a pickle-only folder: the error names the pickle file
        found = sorted(p.name for p in self.folder.iterdir())
        raise FileNotFoundError(f"{self.folder} holds no {WEIGHTS_NAME} / {WEIGHTS_INDEX_NAME} (found: {found})")

    def _read_headers(self, shards: dict[str, list[str] | None]) -> dict[str, TensorInfo]:
        info: dict[str, TensorInfo] = {}
        for shard, listed in shards.items():
            with safe_open(str(self.folder / shard), framework="pt") as handle:
                held = set(handle.keys())
                for name in listed if listed is not None else handle.keys():
                    if name not in held:
                        raise ValueError(f"{self.index_file} puts tensor {name!r} in shard {shard!r}, which does not "
                                         "hold it")
                    piece = handle.get_slice(name)
                    info[name] = TensorInfo(shard, _torch_dtype(piece.get_dtype(), name, shard),
                                            tuple(piece.get_shape()))
        return info

    # ----- what is there --------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        """Every tensor's checkpoint name."""
        return list(self.info)

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors (what the weights take on disk, headers aside)."""
        return sum(t.nbytes for t in self.info.values())

    @property
    def dtype(self) -> torch.dtype:
        """The checkpoint's dtype: the one most of its floating-point bytes are stored in."""
        counts = Counter()
        for t in self.info.values():
            if t.dtype.is_floating_point:
                counts[t.dtype] += t.nbytes
        return counts.most_common(1)[0][0] if counts else torch.float32

    def side_files(self) -> list[Path]:
        """The config, generation and tokenizer files of the folder (what a copy of the checkpoint takes along)."""
        return [self.folder / name for name in SIDE_FILES if (self.folder / name).is_file()]

    # ----- reading --------------------------------------------------------------------------------------------------
    def read(self, names) -> dict[str, torch.Tensor]:
        """The tensors `names`, on the CPU in their stored dtype (maybe sharing the file's memory mapping); each
        shard is opened once and its handle closed afterwards.

        Raises:
            KeyError: a name the checkpoint does not hold (named, with the folder).
        """
        by_shard: dict[str, list[str]] = {}
        for name in names:
            if name not in self.info:
                raise KeyError(f"tensor {name!r} is not in the checkpoint {self.folder}")
            by_shard.setdefault(self.info[name].shard, []).append(name)
        out = {}
        for shard, wanted in by_shard.items():
            with safe_open(str(self.folder / shard), framework="pt") as handle:
                for name in wanted:
                    out[name] = handle.get_tensor(name)
        return {name: out[name] for name in names}

    def read_each(self, names):
        """Yield `(name, tensor)` for `names`, grouped by shard, one tensor read at a time (the caller may convert and
        drop each before the next is read: a block then never exists twice, stored and converted; the shard's memory
        mapping, whose touched pages count in the resident set, is closed after each tensor).

        Raises:
            KeyError: a name the checkpoint does not hold (before anything is read).
        """
        by_shard: dict[str, list[str]] = {}
        for name in names:
            if name not in self.info:
                raise KeyError(f"tensor {name!r} is not in the checkpoint {self.folder}")
            by_shard.setdefault(self.info[name].shard, []).append(name)
        for shard, wanted in by_shard.items():
            for name in wanted:  # the shard is opened per tensor: its mapped pages are let go after each one
                with safe_open(str(self.folder / shard), framework="pt") as handle:
                    tensor = handle.get_tensor(name)
                yield name, tensor
                del tensor


def _weight_map(index: Path) -> dict[str, str]:
    try:
        weight_map = json.loads(index.read_text()).get("weight_map")
    except (json.JSONDecodeError, AttributeError) as err:
        raise ValueError(f"{index} is not a safetensors index (a JSON object with 'weight_map'): {err}") from None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise ValueError(f"{index} has no 'weight_map' mapping tensor names to shard file names")
    return weight_map


def _torch_dtype(name: str, tensor: str, shard: str) -> torch.dtype:
    if name not in SAFETENSORS_DTYPES:
        raise ValueError(f"tensor {tensor!r} in shard {shard!r} has dtype {name}, which hfprune cannot stream")
    return SAFETENSORS_DTYPES[name]
