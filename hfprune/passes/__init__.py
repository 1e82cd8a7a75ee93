"""The pass layer: the only code that drives batches through a model (criteria, importance, sparsity and budget sit
on top of it; it imports none of them).

* `batches`: one `iter_batches` (dicts on the device, label aliases, limits, position checks), `is_causal_lm`,
  `with_lm_labels`, `prepare_batches`;
* `modes`: `scoring_mode` (eval, parameters frozen, everything restored) and `eager_attention`;
* `gradients`: `gated_passes`, forward + backward through the gates of heads / neurons / layers (Michel, Taylor,
  Fisher, the layer gate, the budget search's mask gradients), and `weight_gradient_passes` (weight-level Taylor);
* `forward`: `forward_passes`, no gradient, hooks read activations (Minitron, block influence, angular);
* `blocks`: the block walker `walk_blocks`, one block at a time on the outputs of the blocks before it (Wanda,
  SparseGPT);
* `bars`: `progress`, bars only on a terminal, log lines elsewhere;
* `distributed`: the sums over processes (`all_reduce_sum`, `sum_per_token`, `gather_rows`).
"""

from .bars import progress, stderr_is_terminal
from .batches import (
    batch_size,
    check_limit,
    check_model,
    check_seq_len,
    is_causal_lm,
    iter_batches,
    max_positions,
    model_loss,
    prepare_batches,
    with_lm_labels,
)
from .blocks import capture_block_inputs, feed, names_per_block, run_block, walk_blocks
from .distributed import all_reduce_sum, all_reduce_sum_, gather_rows, is_distributed, is_main_process, sum_per_token
from .forward import block_input, block_output, forward_passes
from .gradients import (
    BatchView,
    TokenCounter,
    gated_passes,
    per_example_stats,
    per_example_unit_grads,
    weight_gradient_passes,
)
from .memory import MemoryMeter
from .modes import eager_attention, scoring_mode

__all__ = ["BatchView", "MemoryMeter", "TokenCounter", "all_reduce_sum", "all_reduce_sum_", "batch_size",
           "block_input", "block_output", "capture_block_inputs", "check_limit", "check_model", "check_seq_len",
           "eager_attention", "feed", "forward_passes", "gated_passes", "gather_rows", "is_causal_lm",
           "is_distributed", "is_main_process", "iter_batches", "max_positions", "model_loss", "names_per_block",
           "per_example_stats", "per_example_unit_grads", "prepare_batches", "progress", "run_block", "scoring_mode",
           "stderr_is_terminal", "sum_per_token", "walk_blocks", "weight_gradient_passes", "with_lm_labels"]
