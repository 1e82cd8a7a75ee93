"""A checkpoint's model on the meta device, made real one block at a time: what a block walker iterates over.

`StreamedModel(folder, device=..., dtype=...)` reads the config and the shard headers, builds the model on the meta
device and matches every checkpoint tensor to a model tensor (all checked before any weight is read). Then:

- `stream.blocks()` yields `(index, block)`: block `index` materialized on `device` in `dtype`, freed (back to meta)
  when the loop moves on;
- `stream.outside()` materializes everything that is not a block (embeddings, final norm, head, rotary buffers) for
  the length of a `with`;
- `stream.block_state(index)` / `stream.outside_state()` give a materialized part's tensors under their checkpoint
  names, which is what `CheckpointWriter.add_tensors` takes.

The family adapter (`hfprune.arch.get_adapter(config)`) says where the blocks are (`layers_paths`); nothing here
knows a module name.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..arch import get_adapter
from ..io.names import CONFIG_NAME
from ..io.rebuild import to_model_keys
from ..passes.memory import release_free_heap
from .materialize import build_meta_model, free, materialize, part_slots
from .reader import CheckpointReader


class StreamedModel:
    """A safetensors checkpoint's model with its weights left on disk until a block asks for them.

    Args:
        source (`str`, `os.PathLike` or `CheckpointReader`): the checkpoint folder (config + safetensors).
        device (`str` or `torch.device`, defaults to `"cpu"`): where a materialized part is placed.
        dtype (`torch.dtype`, defaults to `torch.float32`): the compute dtype of materialized floating-point tensors
            (the checkpoint's own dtype is kept for writing: `CheckpointWriter` casts back).

    Attributes:
        reader (`CheckpointReader`), config, model (the meta model), adapter, layers_path (`str`, e.g.
        `"model.layers"`), names (`dict[str, str]`: model name -> checkpoint name).

    Raises:
        FileNotFoundError / ValueError: see `CheckpointReader`; no `config.json`; a checkpoint tensor the model does not
            have, a model tensor the checkpoint lacks, or a shape that differs from the config's (named).

    Example:
        ```python
        >>> stream = StreamedModel("llama-7b", device="cuda")
        >>> for index, block in stream.blocks():
        ...     print(index, block.mlp.down_proj.weight.dtype)   # one block in memory at a time
        0 torch.float32
        ```
    """

    def __init__(self, source: str | os.PathLike | CheckpointReader, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32):
        self.reader = source if isinstance(source, CheckpointReader) else CheckpointReader(source)
        self.config = _load_config(self.reader.folder)
        self.device, self.dtype = torch.device(device), dtype
        self.model = build_meta_model(self.config)
        self.adapter = get_adapter(self.config)
        self.layers_path = self.adapter.layers_path(self.model)
        self.names = _match_names(self.model, self.reader)
        self._block_of = {name: _block_index(name, self.layers_path) for name in self.names}

    # ----- layout ---------------------------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.model.get_submodule(self.layers_path))

    def block(self, index: int) -> nn.Module:
        """Block `index` of the model (meta unless materialized)."""
        return self.model.get_submodule(self.layers_path)[index]

    def block_names(self, index: int) -> list[str]:
        """Checkpoint names of block `index`'s tensors."""
        return [ckpt for name, ckpt in self.names.items() if self._block_of[name] == index]

    def outside_names(self) -> list[str]:
        """Checkpoint names of the tensors outside the blocks (embeddings, final norm, head)."""
        return [ckpt for name, ckpt in self.names.items() if self._block_of[name] is None]

    # ----- materializing --------------------------------------------------------------------------------------------
    def load_block(self, index: int) -> nn.Module:
        """Materialize block `index` on `device` in `dtype` (its tensors read from the shards) and return it."""
        prefix = f"{self.layers_path}.{index}"
        self._load(part_slots(self.model, inside=prefix), self.block_names(index))
        return self.block(index)

    def free_block(self, index: int) -> None:
        """Give block `index`'s memory back (its parameters become meta tensors of the same shapes).

        glibc's free heap is trimmed afterwards: without it, streamed through `CheckpointWriter`, a 1024-wide bf16
        Llama's resident set grew by about 37 MB per block (16 blocks: +450 MB); with it, it stays flat.
        """
        free(part_slots(self.model, inside=f"{self.layers_path}.{index}"))
        release_free_heap()

    def blocks(self, start: int = 0):
        """Yield `(index, block)` for every block from `start`, materialized; each is freed when the loop moves on
        (or stops)."""
        for index in range(start, self.num_blocks):
            block = self.load_block(index)
            try:
                yield index, block
            finally:
                self.free_block(index)

    @contextmanager
    def outside(self):
        """Materialize every tensor outside the blocks for the length of a `with`; yields the (partly meta) model."""
        slots = part_slots(self.model, outside=self.layers_path)
        self._load(slots, self.outside_names())
        try:
            yield self.model
        finally:
            free(slots)
            release_free_heap()

    def _load(self, slots, checkpoint_names: list[str]) -> None:
        materialize(slots, self.read_converted(checkpoint_names), self.device, self.dtype, str(self.reader.folder))

    def read_converted(self, checkpoint_names: list[str]) -> dict[str, torch.Tensor]:
        """The tensors `checkpoint_names` by model name, on `device`, floating-point ones in `dtype`: each is
        converted as soon as it is read, so the stored copy of a block and its converted copy never coexist."""
        to_model = {ckpt: name for name, ckpt in self.names.items()}
        out = {}
        for ckpt, tensor in self.reader.read_each(checkpoint_names):
            out[to_model[ckpt]] = tensor.to(self.device, self.dtype if tensor.is_floating_point() else tensor.dtype)
            del tensor
        return out

    # ----- what goes to the writer ----------------------------------------------------------------------------------
    def block_state(self, index: int) -> dict[str, torch.Tensor]:
        """Block `index`'s tensors (materialized, maybe pruned) under their checkpoint names."""
        return self._state(part_slots(self.model, inside=f"{self.layers_path}.{index}"))

    def outside_state(self) -> dict[str, torch.Tensor]:
        """The tensors outside the blocks (inside `outside()`) under their checkpoint names."""
        return self._state(part_slots(self.model, outside=self.layers_path))

    def _state(self, slots) -> dict[str, torch.Tensor]:
        state = {self.names[s.name]: s.get().detach() for s in slots if s.name in self.names}
        meta = [name for name, tensor in state.items() if tensor.is_meta]
        if meta:
            raise RuntimeError(f"tensor {meta[0]!r} is not materialized (read its state inside blocks() / outside())")
        return state


def _load_config(folder: Path):
    from transformers import AutoConfig

    if not (folder / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"checkpoint folder {folder} has no {CONFIG_NAME}; streaming builds the model from it")
    return AutoConfig.from_pretrained(folder)


def _block_index(name: str, layers_path: str) -> int | None:
    prefix = layers_path + "."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix):].split(".", 1)[0])


def _match_names(model: nn.Module, reader: CheckpointReader) -> dict[str, str]:
    """Model name -> checkpoint name for every checkpoint tensor (transformers' load-time renamings applied), checked
    against the meta model: no stray tensor, none missing (tied partners and computed buffers aside), same shapes."""
    names = to_model_keys(model, {n: n for n in reader.names})  # the values stay the checkpoint names
    expected = model.state_dict()
    for model_name, ckpt in names.items():
        where = f"tensor {ckpt!r} (shard {reader.info[ckpt].shard!r} of {reader.folder})"
        if model_name not in expected:
            raise ValueError(f"{where} is not a tensor of {type(model).__name__} built from its config")
        if tuple(expected[model_name].shape) != reader.info[ckpt].shape:
            raise ValueError(f"{where} has shape {reader.info[ckpt].shape}; the config gives "
                             f"{tuple(expected[model_name].shape)}")
    present = {id(slot.get()) for slot in part_slots(model) if slot.name in names}
    for slot in part_slots(model):
        if slot.name in expected and slot.name not in names and slot.get().is_meta and id(slot.get()) not in present:
            raise ValueError(f"the checkpoint {reader.folder} has no tensor {slot.name!r} (nor one tied to it)")
    return names
