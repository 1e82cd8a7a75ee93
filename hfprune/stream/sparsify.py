"""`sparsify_checkpoint`: Wanda / SparseGPT from a safetensors checkpoint to another, one block in memory at a time.

The criterion code is the in-memory one (`criteria/_blockwise.prune_blocks` with its `walk` given): the calibration
batches go through the embeddings once (`StreamedModel.outside()`), then for each block: materialized on `device` in
`dtype`, its statistics collected and its targets pruned (and, for SparseGPT, reconstructed) by the criterion, run once
more for the next block's inputs, written to the output shards in the checkpoint's own dtype, freed. The output is a
plain dense checkpoint (zeros where weights were pruned), loadable with `from_pretrained`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence

import torch

from ..criteria import check_call, get_criterion
from ..passes.blocks import capture_block_inputs, run_block, with_hidden
from ..passes.forward import block_input
from ..sparsity.blockwise import check_blockwise
from ..sparsity.config import SparsifyConfig
from ..sparsity.targets import resolve_targets
from .model import StreamedModel
from .writer import CheckpointWriter


def stream_walk(stream: StreamedModel, writer: CheckpointWriter, batches: Iterable, progress=None):
    """A `walk` for `prune_blocks`: `stream`'s blocks one at a time, each written to `writer` after its visit.

    `progress(index, seconds)` (optional) is called after each block is written.
    """

    def walk(visit, finish) -> dict:
        start = time.perf_counter()
        with torch.no_grad():
            with stream.outside() as model:
                inputs = capture_block_inputs(model, stream.block(0), batches, stream.device)
            for name, tensor in stream.reader.read_each(stream.outside_names()):  # unchanged: copied as stored
                writer.add(name, tensor)
                del tensor
            hidden = [block_input(a, k) for a, k in inputs]
            tokens, samples = sum(int(h.shape[:-1].numel()) for h in hidden), sum(int(h.shape[0]) for h in hidden)
            del hidden
            for index, block in stream.blocks():
                visit(index, block, inputs)
                if index + 1 < stream.num_blocks:
                    inputs = [with_hidden(a, k, run_block(block, a, k)) for a, k in inputs]
                writer.add_tensors(stream.block_state(index))
                if progress is not None:
                    progress(index, time.perf_counter() - start)
            del inputs
            finish()
        return {"seconds": time.perf_counter() - start, "blocks": stream.num_blocks, "samples": samples,
                "tokens": tokens, "device": str(stream.device)}

    return walk


def sparsify_checkpoint(source: str | os.PathLike, output: str | os.PathLike, criterion: str = "wanda",
                        sparsity: float | None = None, pattern: str = "unstructured", batches: Iterable | None = None,
                        targets: str | Sequence[str] | None = None, device: str | torch.device = "cpu",
                        dtype: torch.dtype = torch.float32, max_shard_size: int | str = "2GB",
                        overwrite: bool = False, progress=None, **options) -> dict:
    """Prune the weights of a checkpoint block by block with Wanda or SparseGPT and write the pruned checkpoint.

    Equal to `hfprune.sparsify(model, sparsity, criterion, pattern, dataloader=batches, ...)` on the model loaded in
    `dtype` (the same criterion code, block by block), without ever holding more than one block.

    Args:
        source (`str` or `os.PathLike`): the checkpoint folder (config + safetensors shards).
        output (`str` or `os.PathLike`): the folder to write (not inside the source; free disk space is checked first).
        criterion (`str`, defaults to `"wanda"`): a block-by-block criterion (`"wanda"`, `"sparsegpt"`).
        sparsity, pattern, targets, options: as for `hfprune.sparsify` (scope is `"layer"`).
        batches (`Iterable[dict]`): calibration batches (`input_ids`, optionally `attention_mask`).
        device (`str` or `torch.device`, defaults to `"cpu"`): where each block is computed.
        dtype (`torch.dtype`, defaults to `torch.float32`): the compute dtype; the output keeps the source's dtypes.
        max_shard_size (`int` or `str`, defaults to `"2GB"`): the output's shard size.
        overwrite (`bool`, defaults to `False`): replace an existing `output` that hfprune did not write.
        progress (`Callable[[int, float], None]`, *optional*): called with (block index, seconds) after each block.

    Returns:
        `dict`: `seconds`, `blocks`, `samples`, `tokens`, `device`, `criterion`, `pattern`, `sparsity`, `targets`.

    Raises:
        ValueError: a criterion that is not block by block, a bad option / pattern / target, no batches, or a bad
            checkpoint or output location (all before anything is written; the source is never changed).
    """
    config = SparsifyConfig(sparsity=sparsity, criterion=criterion, pattern=pattern, targets=targets,
                            criterion_options=options)
    found = get_criterion(criterion, "weights")
    check_call(found, caller="sparsify_checkpoint", dataloader=batches)
    if not found.sequential:
        raise ValueError(f"criterion={criterion!r} does not prune block by block; sparsify_checkpoint takes a "
                         "needs='blocks' criterion such as 'wanda' or 'sparsegpt'")
    stream = StreamedModel(source, device=device, dtype=dtype)
    chosen = resolve_targets(stream.model, config.targets)
    check_blockwise(stream.model, chosen, config, found, batches)
    with CheckpointWriter(output, source=stream.reader, max_shard_size=max_shard_size, overwrite=overwrite) as writer:
        result = found.fn(stream.model, batches, targets=chosen, sparsity=float(config.sparsity),
                          pattern=config.parsed_pattern, device=stream.device, originals=None,
                          walk=stream_walk(stream, writer, batches, progress), **options)
    return dict(result.info, criterion=criterion, pattern=str(config.parsed_pattern), sparsity=float(config.sparsity),
                targets=len(chosen))


__all__ = ["sparsify_checkpoint", "stream_walk"]
