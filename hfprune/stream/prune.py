"""`prune_checkpoint`: a structured `PruningPlan` (heads, FFN neurons, hidden width, layers) applied to a checkpoint
block by block, written to another checkpoint.

The surgery is the in-memory one (`hfprune.surgery.apply_plan`, behind `hfprune.prune`), run once per part on a
fresh meta model in which only that part (one block, or everything outside the blocks) is real: the meta tensors of
the other parts are sliced as shapes only (no memory), the real ones as weights. Each part's pruned tensors go to the
writer, then the part is dropped. The output's config is the pruned model's (plain keys where they can say the
structure, hfprune's record otherwise), so a uniform plan reloads with plain `from_pretrained`.
"""

from __future__ import annotations

import copy
import gc
import os

import torch

from ..plan import PruningPlan
from ..surgery import apply_plan
from .materialize import build_meta_model, materialize, part_slots
from .model import StreamedModel
from .writer import CheckpointWriter


def _fresh_meta(stream: StreamedModel):
    """A fresh meta model of the source's config (a copy: the surgery changes the config it holds)."""
    return build_meta_model(copy.deepcopy(stream.config))


def _state_under(model, inside: str | None, outside: str | None) -> dict[str, torch.Tensor]:
    """The real tensors of `model`'s state dict under `inside` (all) and not under `outside`; tied ones once."""
    state, seen = {}, set()
    for name, tensor in model.state_dict().items():
        if tensor.is_meta or id(tensor) in seen:
            continue
        if inside is not None and not name.startswith(inside + "."):
            continue
        if outside is not None and name.startswith(outside + "."):
            continue
        seen.add(id(tensor))
        state[name] = tensor
    return state


def pruned_part(stream: StreamedModel, plan: PruningPlan, index: int | None) -> dict[str, torch.Tensor]:
    """Block `index` (`None`: the tensors outside the blocks) read, materialized, pruned by `plan`; its tensors under
    their names in the pruned model (a block after removed layers has its new index; a removed block: `{}`)."""
    removed = set(plan.layers)
    if index in removed:
        return {}
    model = _fresh_meta(stream)
    prefix = None if index is None else f"{stream.layers_path}.{index}"
    names = stream.outside_names() if index is None else stream.block_names(index)
    slots = part_slots(model, inside=prefix, outside=stream.layers_path if index is None else None)
    materialize(slots, stream.read_converted(names), stream.device, stream.dtype, str(stream.reader.folder))
    with torch.no_grad():
        apply_plan(model, plan)
    if index is None:
        return _state_under(model, None, stream.layers_path)
    new_index = index - sum(1 for r in removed if r < index)
    return _state_under(model, f"{stream.layers_path}.{new_index}", None)


def prune_checkpoint(source: str | os.PathLike, output: str | os.PathLike, plan: PruningPlan,
                     device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                     max_shard_size: int | str = "2GB", overwrite: bool = False, progress=None) -> dict:
    """Remove the units of `plan` from a checkpoint, one block in memory at a time, and write the pruned checkpoint.

    Equal to `hfprune.prune(model, plan)` followed by `save_pretrained` on the loaded model (the same surgery code).

    Args:
        source (`str` or `os.PathLike`): the checkpoint folder (config + safetensors shards).
        output (`str` or `os.PathLike`): the folder to write (not inside the source; free disk space is checked first).
        plan (`PruningPlan`): heads / neurons / hidden / layers to remove, indexed as the source is.
        device, dtype: where and in which dtype each part is sliced (the output keeps the source's dtypes).
        max_shard_size (`int` or `str`, defaults to `"2GB"`), overwrite (`bool`): as for `CheckpointWriter`.
        progress (`Callable[[int], None]`, *optional*): called with each block's index once it is written.

    Returns:
        `dict`: `blocks` (written), `bytes` (the output's tensor bytes), `config` (the pruned config).

    Raises:
        ValueError: a plan that does not fit the checkpoint's model (checked on the meta model before anything is
            written), a bad checkpoint or output location; the source is never changed.
    """
    stream = StreamedModel(source, device=device, dtype=dtype)
    plan.validate(stream.model)
    shaped = _fresh_meta(stream)
    apply_plan(shaped, plan)  # shapes only: the output's config and size
    itemsize = stream.reader.dtype.itemsize
    expected = sum(t.numel() * (itemsize if t.is_floating_point() else t.element_size())
                   for t in shaped.state_dict().values())
    written = 0
    with CheckpointWriter(output, source=stream.reader, max_shard_size=max_shard_size, config=shaped.config,
                          expected_bytes=expected, overwrite=overwrite) as writer:
        writer.add_tensors(pruned_part(stream, plan, None))
        for index in range(stream.num_blocks):
            part = pruned_part(stream, plan, index)
            writer.add_tensors(part)
            written += bool(part)
            del part
            gc.collect()  # the part's meta model holds reference cycles: its real block goes only with them
            if progress is not None:
                progress(index)
    return {"blocks": written, "bytes": expected, "config": shaped.config}


__all__ = ["prune_checkpoint", "pruned_part"]
