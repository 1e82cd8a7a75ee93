"""Models larger than memory: a safetensors checkpoint read, materialized and written one block at a time.

The pieces (these import nothing of hfprune but `arch`, `io`, `structure` and `passes.memory`):

- `CheckpointReader(folder)`: the shard headers (names, dtypes, shapes, bytes) and `read(names)`, memory-mapped reads
  of just those tensors; pickle-only folders, missing shards and shard names leaving the folder are refused.
- `StreamedModel(folder, device=..., dtype=torch.float32)`: the model built on the meta device from the config; the
  family adapter's `layers_paths` say where the blocks are; `blocks()` materializes one block at a time on `device`
  in the compute dtype and frees it (back to meta) when the loop moves on; `outside()` does the same for embeddings,
  final norm and head; `block_state(index)` / `outside_state()` hand a part's tensors to the writer.
- `CheckpointWriter(out, source=reader, max_shard_size="2GB")`: sharded safetensors + index + config + tokenizer files,
  each tensor cast back to the dtype the source stores it in, into a temporary sibling folder swapped in atomically;
  checks the output location and the free disk space before writing anything.

Built on them:

- `sparsify_checkpoint(src, out, criterion="wanda" | "sparsegpt", sparsity=..., pattern=..., batches=...)`: the
  in-memory criterion code (`criteria/_blockwise.prune_blocks`) with `stream_walk` as its walk: each block
  materialized, calibrated, pruned, run for the next inputs, written, freed.
- `prune_checkpoint(src, out, plan)`: a structured `PruningPlan` (heads / neurons / hidden / layers) through the
  in-memory surgery (`hfprune.prune`) on one materialized part of a meta model at a time.
- `perplexity_checkpoint(src, batches, stride=..., max_length=...)`: `hfprune.perplexity`'s windows, block by block.

The streamed block walker is `hfprune.passes.blocks`'
`walk_blocks` with `stream.blocks()` in place of "move each block of a loaded model to the device":

```python
from hfprune.passes.blocks import capture_block_inputs, run_block, with_hidden

stream = StreamedModel("llama-14b", device="cuda", dtype=torch.float32)
with CheckpointWriter("llama-14b-wanda", source=stream.reader, max_shard_size="2GB") as writer:
    with stream.outside() as model:                 # embeddings, final norm, head: real for this `with` only
        inputs = capture_block_inputs(model, stream.block(0), batches, stream.device)  # stops at block 0 (meta)
    writer.add_tensors(stream.reader.read(stream.outside_names()))   # unchanged tensors: copied as stored
    for index, block in stream.blocks():            # block `index` on the device, fp32; freed after the body
        visit(index, block, inputs)                 # statistics (passes.blocks.feed), then Wanda / SparseGPT / slicing
        inputs = [with_hidden(a, k, run_block(block, a, k)) for a, k in inputs]   # the next block's inputs
        writer.add_tensors(stream.block_state(index))   # cast back to bf16 / fp16, straight to the open shard
```

A structural change passes the new config to the writer (`CheckpointWriter(..., config=new_config)`); a plan that
needs every block's scores first walks `stream.blocks()` twice (score, then slice and write).
"""

from .materialize import Slot, build_meta_model, free, materialize, part_slots
from .model import StreamedModel
from .perplexity import perplexity_checkpoint
from .prune import prune_checkpoint, pruned_part
from .reader import CheckpointReader, TensorInfo
from .sparsify import sparsify_checkpoint, stream_walk
from .writer import CheckpointWriter, check_free_space, check_output_location, parse_size, safetensors_header

__all__ = [
    "CheckpointReader",
    "CheckpointWriter",
    "Slot",
    "StreamedModel",
    "TensorInfo",
    "build_meta_model",
    "check_free_space",
    "check_output_location",
    "free",
    "materialize",
    "parse_size",
    "perplexity_checkpoint",
    "prune_checkpoint",
    "pruned_part",
    "part_slots",
    "safetensors_header",
    "sparsify_checkpoint",
    "stream_walk",
]
