"""Writing a checkpoint block by block: sharded safetensors + index + config + tokenizer files, swapped in atomically.

`CheckpointWriter(out, source=reader)` checks, before it writes anything, that `out` is neither the source folder,
inside it, nor a folder holding it, and that the file system has room for the output. Inside its `with`, tensors
come in by `add` / `add_tensors` (a block at a time) and are cast back to the dtype the source stores them in (a bf16
checkpoint stays bf16 on disk whatever the compute dtype); a shard is written whenever the next tensor would take it
past `max_shard_size`. Memory stays at about one tensor: each tensor's bytes go straight to the open shard's data
file, and when the shard is full its safetensors header (which lists every tensor, so it can only be written last) is
written to the shard file, followed by the data copied over on disk. Everything goes to a temporary sibling folder
(`hfprune.io.atomic.atomic_dir`) that replaces `out` only when the `with` ends without error.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import struct
from contextlib import ExitStack
from pathlib import Path

import torch

from ..io.atomic import atomic_dir, check_output
from ..io.names import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from .reader import SAFETENSORS_DTYPES, CheckpointReader

_DTYPE_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20,
          "GIB": 2**30, "TIB": 2**40}


def parse_size(size: int | str) -> int:
    """Bytes of a size given as an int or a string such as `"2GB"` (10**9) or `"500MiB"` (2**20), as transformers'
    `max_shard_size` reads it."""
    if isinstance(size, int):
        value = size
    else:
        match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(size))
        if not match or match.group(2).upper() not in _UNITS:
            raise ValueError(f"max_shard_size={size!r} is not a size (an int, or e.g. '2GB', '500MB', '1GiB')")
        value = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    if value <= 0:
        raise ValueError(f"max_shard_size={size!r} must be positive")
    return value


def safetensors_header(entries) -> bytes:
    """The header of a safetensors file whose data holds `entries` (`(name, dtype, shape)`) back to back, in order:
    the 8-byte little-endian length, then the JSON (with `{"format": "pt"}` metadata) padded with spaces to 8 bytes."""
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for name, dtype, shape in entries:
        end = offset + math.prod(shape) * dtype.itemsize
        header[name] = {"dtype": _DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, end]}
        offset = end
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def check_output_location(source: str | os.PathLike, output: str | os.PathLike) -> None:
    """Refuse an output folder that is the source checkpoint, lies inside it, or holds it (replacing the output would
    delete the source), or that is an existing file.

    Raises:
        ValueError: naming both folders.
    """
    src, out = Path(source).resolve(), Path(output).resolve()
    if out == src:
        raise ValueError(f"the output folder {output} is the source checkpoint {source} itself; write to another "
                         "folder")
    if src in out.parents:
        raise ValueError(f"the output folder {output} is inside the source checkpoint {source}; write it elsewhere")
    if out in src.parents:
        raise ValueError(f"the source checkpoint {source} is inside the output folder {output}, which the finished "
                         "output replaces: that would delete the source; write to another folder")
    if out.exists() and not out.is_dir():
        raise ValueError(f"the output path {output} is an existing file, not a folder")


def check_free_space(output: str | os.PathLike, needed: int) -> None:
    """Refuse to start when the file system that will hold `output` has less than `needed` bytes free.

    Raises:
        OSError: naming the folder, the bytes needed and the bytes free.
    """
    anchor = Path(output).resolve()
    while not anchor.exists():
        anchor = anchor.parent
    free = shutil.disk_usage(anchor).free
    if free < needed:
        raise OSError(f"not enough disk space for {output}: the output needs about {needed:,} bytes "
                      f"({needed / 1e9:.2f} GB), the file system of {anchor} has {free:,} bytes ({free / 1e9:.2f} GB) "
                      "free")


class CheckpointWriter:
    """Writes a checkpoint tensor by tensor into sharded safetensors, atomically, holding about one tensor in memory.

    Args:
        output_dir (`str` or `os.PathLike`): the folder to write (replaced, if it exists, once the output is complete).
        source (`CheckpointReader`): the checkpoint the tensors come from: their stored dtypes, its config and
            tokenizer files (copied), its folder (which the output may not touch).
        max_shard_size (`int` or `str`, defaults to `"2GB"`): the most bytes per shard (a bigger tensor gets a shard of
            its own).
        config (*optional*): a config to write instead of the source's `config.json` (after a structural change).
        expected_bytes (`int`, *optional*): the bytes the output's tensors will take, for the free-space check;
            defaults to the source's. The check adds the side files and one shard of scratch space (a shard's data
            waits in a scratch file until its header can be written).
        overwrite (`bool`, defaults to `False`): replace an existing `output_dir` that hfprune did not write
            (`hfprune.io.atomic.atomic_dir`; an earlier hfprune output, or an empty folder, is replaced anyway).

    Raises:
        ValueError: a bad output location, a tensor added twice, an empty output.
        FileExistsError: `output_dir` is a folder hfprune did not write, without `overwrite=True`.
        OSError: not enough free disk space (checked on entering, before anything is written).

    Example:
        ```python
        >>> with CheckpointWriter("out/llama-wanda", source=stream.reader, max_shard_size="1GB") as writer:
        ...     for index, block in stream.blocks():
        ...         writer.add_tensors(stream.block_state(index))
        ```
    """

    def __init__(self, output_dir: str | os.PathLike, source: CheckpointReader, max_shard_size: int | str = "2GB",
                 config=None, expected_bytes: int | None = None, overwrite: bool = False):
        self.output_dir, self.source, self.config, self.overwrite = Path(output_dir), source, config, overwrite
        self.max_shard_size = parse_size(max_shard_size)
        tensors = source.nbytes if expected_bytes is None else int(expected_bytes)
        side = sum(p.stat().st_size for p in source.side_files())
        self.needed_bytes = tensors + side + min(tensors, self.max_shard_size)
        self.weight_map: dict[str, int] = {}  # name -> shard number (0-based)
        self._entries: list[tuple[str, torch.dtype, tuple[int, ...]]] = []  # the open shard's tensors, in order
        self._data = None  # the open shard's scratch data file
        self._data_bytes = self._total_bytes = self._total_numel = self._shards = 0
        self._tmp: Path | None = None
        self._stack: ExitStack | None = None

    # ----- context --------------------------------------------------------------------------------------------------
    def __enter__(self) -> CheckpointWriter:
        check_output_location(self.source.folder, self.output_dir)
        check_output(self.output_dir, self.overwrite)
        check_free_space(self.output_dir, self.needed_bytes)
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_dir(self.output_dir, overwrite=self.overwrite))
        return self

    def __exit__(self, exc_type, exc, tb):
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                self._close_data()
                stack.__exit__(type(err), err, err.__traceback__)  # the temporary folder is removed
                raise
            return stack.__exit__(None, None, None)  # the finished folder replaces the output
        self._close_data()
        return stack.__exit__(exc_type, exc, tb)

    # ----- tensors --------------------------------------------------------------------------------------------------
    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Write one tensor under its checkpoint `name`, cast to the dtype the source stores it in (the checkpoint's
        dtype for a new floating-point name)."""
        if self._stack is None:
            raise RuntimeError("CheckpointWriter.add is called outside its `with` block")
        if name in self.weight_map:
            raise ValueError(f"tensor {name!r} was already written to {self.output_dir}")
        value = tensor.detach().to(device="cpu", dtype=self._dtype_for(name, tensor)).contiguous()
        if value.dtype not in _DTYPE_NAMES:
            raise ValueError(f"tensor {name!r} has dtype {value.dtype}, which safetensors cannot store")
        size = value.numel() * value.element_size()
        if self._entries and self._data_bytes + size > self.max_shard_size:
            self._close_shard()
        if self._data is None:
            self._data = open(self._part(self._shards, "data"), "wb")  # closed by _close_shard or on error
        self._data.write(value.reshape(-1).view(torch.uint8).numpy().data)
        self._entries.append((name, value.dtype, tuple(value.shape)))
        self._data_bytes += size
        self._total_bytes += size
        self._total_numel += value.numel()
        self.weight_map[name] = self._shards

    def add_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """`add` every `name: tensor` of `tensors`, in order."""
        for name, tensor in tensors.items():
            self.add(name, tensor)

    def _dtype_for(self, name: str, tensor: torch.Tensor) -> torch.dtype:
        info = self.source.info.get(name)
        if info is not None:
            return info.dtype
        return self.source.dtype if tensor.is_floating_point() else tensor.dtype

    def _part(self, number: int, kind: str) -> Path:
        return self._tmp / f".shard-{number:05d}.{kind}"

    def _close_shard(self) -> None:
        """Write the open shard: its header, then its data copied over from the scratch file (on disk, in chunks)."""
        if not self._entries:
            return
        self._close_data()
        data = self._part(self._shards, "data")
        with open(self._part(self._shards, "part"), "wb") as shard, open(data, "rb") as scratch:
            shard.write(safetensors_header(self._entries))
            shutil.copyfileobj(scratch, shard, 2**24)
        data.unlink()
        self._entries, self._data_bytes = [], 0
        self._shards += 1

    def _close_data(self) -> None:
        if self._data is not None:
            self._data.close()
            self._data = None

    # ----- finishing ------------------------------------------------------------------------------------------------
    def _finish(self) -> None:
        self._close_shard()
        if not self._shards:
            raise ValueError(f"no tensor was added; {self.output_dir} is left as it was")
        names = [WEIGHTS_NAME] if self._shards == 1 else \
            [f"model-{i + 1:05d}-of-{self._shards:05d}.safetensors" for i in range(self._shards)]
        for number, name in enumerate(names):
            self._part(number, "part").rename(self._tmp / name)
        if self._shards > 1:
            index = {"metadata": {"total_parameters": self._total_numel, "total_size": self._total_bytes},
                     "weight_map": {key: names[self.weight_map[key]] for key in sorted(self.weight_map)}}
            (self._tmp / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        for path in self.source.side_files():
            if not (path.name == CONFIG_NAME and self.config is not None):
                shutil.copyfile(path, self._tmp / path.name)
        if self.config is not None:
            self.config.to_json_file(self._tmp / CONFIG_NAME)
