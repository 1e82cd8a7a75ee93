"""Writing a checkpoint block by block: sharded safetensors + index + config + tokenizer files, swapped in atomically.

`CheckpointWriter(out, source=reader)` checks, before it writes anything, that `out` is neither the source folder,
inside it, nor a folder holding it, and that the file system has room for the output. Inside its `with`, tensors
come in by `add` / `add_tensors` (a block at a time) and are cast back to the dtype the source stores them in (a bf16
checkpoint stays bf16 on disk whatever the compute dtype); a shard is written whenever the next tensor would take it
past `max_shard_size`, so at most one shard's worth of tensors waits in memory. Everything goes to a temporary sibling
folder (`hfprune.io.atomic.atomic_dir`) that replaces `out` only when the `with` ends without error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from contextlib import ExitStack
from pathlib import Path

import torch
from safetensors.torch import save_file

from ..io.atomic import atomic_dir
from ..io.names import CONFIG_NAME, WEIGHTS_INDEX_NAME, WEIGHTS_NAME
from .reader import CheckpointReader

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
    """Writes a checkpoint tensor by tensor into sharded safetensors, atomically.

    Args:
        output_dir (`str` or `os.PathLike`): the folder to write (replaced, if it exists, once the output is complete).
        source (`CheckpointReader`): the checkpoint the tensors come from: their stored dtypes, its config and
            tokenizer files (copied), its folder (which the output may not touch).
        max_shard_size (`int` or `str`, defaults to `"2GB"`): the most bytes per shard (a bigger tensor gets a shard of
            its own); also the most bytes of tensors waiting in memory.
        config (*optional*): a config to write instead of the source's `config.json` (after a structural change).
        expected_bytes (`int`, *optional*): the bytes the output will take, for the free-space check; defaults to the
            source's tensors and side files.

    Raises:
        ValueError: a bad output location, a tensor added twice, an empty output.
        OSError: not enough free disk space (checked on entering, before anything is written).

    Example:
        ```python
        >>> with CheckpointWriter("out/llama-wanda", source=stream.reader, max_shard_size="1GB") as writer:
        ...     for index, block in stream.blocks():
        ...         writer.add_tensors(stream.block_state(index))
        ```
    """

    def __init__(self, output_dir: str | os.PathLike, source: CheckpointReader, max_shard_size: int | str = "2GB",
                 config=None, expected_bytes: int | None = None):
        self.output_dir, self.source, self.config = Path(output_dir), source, config
        self.max_shard_size = parse_size(max_shard_size)
        side = sum(p.stat().st_size for p in source.side_files())
        self.expected_bytes = source.nbytes + side if expected_bytes is None else int(expected_bytes)
        self.weight_map: dict[str, int] = {}  # name -> shard number (0-based), for every tensor written or waiting
        self._pending: dict[str, torch.Tensor] = {}
        self._pending_bytes = self._total_bytes = self._total_numel = 0
        self._shards = 0
        self._tmp: Path | None = None
        self._stack: ExitStack | None = None

    # ----- context --------------------------------------------------------------------------------------------------
    def __enter__(self) -> CheckpointWriter:
        check_output_location(self.source.folder, self.output_dir)
        check_free_space(self.output_dir, self.expected_bytes)
        self._stack = ExitStack()
        self._tmp = self._stack.enter_context(atomic_dir(self.output_dir))
        return self

    def __exit__(self, exc_type, exc, tb):
        stack, self._stack = self._stack, None
        if exc_type is None:
            try:
                self._finish()
            except BaseException as err:
                stack.__exit__(type(err), err, err.__traceback__)  # the temporary folder is removed
                raise
            return stack.__exit__(None, None, None)  # the finished folder replaces the output
        return stack.__exit__(exc_type, exc, tb)

    # ----- tensors --------------------------------------------------------------------------------------------------
    def add(self, name: str, tensor: torch.Tensor) -> None:
        """Queue one tensor under its checkpoint `name`, cast to the source's stored dtype for it (the checkpoint's
        dtype for a new name). The writer keeps it until its shard is written: do not change it in place afterwards."""
        if self._stack is None:
            raise RuntimeError("CheckpointWriter.add is called outside its `with` block")
        if name in self.weight_map:
            raise ValueError(f"tensor {name!r} was already written to {self.output_dir}")
        value = tensor.detach().to(device="cpu", dtype=self._dtype_for(name, tensor)).contiguous()
        if any(value.untyped_storage().data_ptr() == t.untyped_storage().data_ptr() for t in self._pending.values()):
            value = value.clone()  # tied tensors stored twice by the source: safetensors refuses shared memory
        size = value.numel() * value.element_size()
        if self._pending and self._pending_bytes + size > self.max_shard_size:
            self._flush()
        self._pending[name] = value
        self._pending_bytes += size
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

    def _flush(self) -> None:
        if self._pending:
            save_file(self._pending, str(self._part(self._shards)), metadata={"format": "pt"})
            self._pending, self._pending_bytes = {}, 0
            self._shards += 1

    def _part(self, number: int) -> Path:
        return self._tmp / f".shard-{number:05d}.part"

    # ----- finishing ------------------------------------------------------------------------------------------------
    def _finish(self) -> None:
        self._flush()
        if not self._shards:
            raise ValueError(f"no tensor was added; {self.output_dir} is left as it was")
        names = [WEIGHTS_NAME] if self._shards == 1 else \
            [f"model-{i + 1:05d}-of-{self._shards:05d}.safetensors" for i in range(self._shards)]
        for number, name in enumerate(names):
            self._part(number).rename(self._tmp / name)
        if self._shards > 1:
            index = {"metadata": {"total_parameters": self._total_numel, "total_size": self._total_bytes},
                     "weight_map": {key: names[self.weight_map[key]] for key in sorted(self.weight_map)}}
            (self._tmp / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
        for path in self.source.side_files():
            if not (path.name == CONFIG_NAME and self.config is not None):
                shutil.copyfile(path, self._tmp / path.name)
        if self.config is not None:
            self.config.to_json_file(self._tmp / CONFIG_NAME)
