"""Running a model block by block on cached inputs (as SparseGPT / llm-compressor calibrate large decoders).

The inputs of block 0 (hidden states plus whatever the model passes the block: attention mask, rotary position
embeddings, ...) are captured once per batch by `hfprune.passes.capture_block_inputs`; afterwards each
block is called directly on the previous block's outputs, so a layer-wise statistic costs one block pass, not one
model pass. No family knowledge: the call signature is whatever the model itself used.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import passes
from ..arch import get_adapter


@dataclass
class BlockInputs:
    """One batch as block 0 receives it.

    Attributes:
        hidden (`torch.Tensor`): `[batch, seq, hidden]` block input.
        args (`tuple`): the other positional arguments.
        kwargs (`dict`): keyword arguments (masks, position embeddings, ...), `hidden_states` removed.
        positional (`bool`): whether the hidden states were passed positionally.
        valid (`torch.Tensor`): `[batch, seq]` bool, the non-padding tokens.
    """

    hidden: torch.Tensor
    args: tuple
    kwargs: dict
    positional: bool
    valid: torch.Tensor

    def with_hidden(self, hidden: torch.Tensor) -> BlockInputs:
        return BlockInputs(hidden, self.args, self.kwargs, self.positional, self.valid)


def capture_block_inputs(model: nn.Module, batches: list[dict]) -> list[BlockInputs]:
    """The input of block 0 for every batch (labels dropped: no loss is computed)."""
    first = get_adapter(model).layers(model)[0]
    out = []
    for batch, (args, kwargs) in zip(batches, passes.capture_block_inputs(model, first, batches)):
        kwargs = dict(kwargs)
        if args:
            hidden, rest, positional = args[0], tuple(args[1:]), True
        else:
            hidden, rest, positional = kwargs.pop("hidden_states"), (), False
        out.append(BlockInputs(hidden, rest, kwargs, positional, _valid_tokens(batch, hidden)))
    return out


def _valid_tokens(batch: dict, hidden: torch.Tensor) -> torch.Tensor:
    mask = batch.get("attention_mask")
    if isinstance(mask, torch.Tensor) and tuple(mask.shape) == tuple(hidden.shape[:2]):
        return mask.to(hidden.device).bool()
    return torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)


def run_block(block: nn.Module, inputs: BlockInputs) -> torch.Tensor:
    """Call one block on cached inputs and return its hidden-state output."""
    if inputs.positional:
        output = block(inputs.hidden, *inputs.args, **inputs.kwargs)
    else:
        output = block(*inputs.args, hidden_states=inputs.hidden, **inputs.kwargs)
    return output[0] if isinstance(output, tuple) else output
