"""Stand-in for an attention block whose heads were all removed: the residual stream passes through."""

from __future__ import annotations

import torch
from torch import nn


class HeadlessAttention(nn.Module):
    """Attention with zero heads. Returns what the original block returns with an empty context.

    It keeps the (now zero-width) output projection when the family's attention owns it, so the output bias still
    contributes exactly as it did when all heads were masked, and state-dict keys stay where they were. With a
    KV cache it appends zero-head keys/values so that the cache's sequence length stays correct for generation.

    Args:
        head_dim (`int`): head size, for the shape of the empty cache entries.
        layer_idx (`int`, *optional*): the cache slot of this layer.
        out_proj (`nn.Module`, *optional*): the output projection with 0 input features, or None when it lives
            outside the attention module (BERT's `attention.output.dense`).
        out_proj_name (`str`, *optional*): the attribute name the family uses for it (`o_proj`, `c_proj`, ...).
    """

    def __init__(self, head_dim: int, layer_idx: int | None = None, out_proj: nn.Module | None = None,
                 out_proj_name: str | None = None):
        super().__init__()
        self.head_dim = head_dim
        self.layer_idx = layer_idx
        self.num_heads = 0
        # The attribute name decides the state-dict key, so it is the family's own name for the projection.
        self.out_proj_name = out_proj_name if out_proj is not None else None
        if out_proj is not None:
            setattr(self, out_proj_name, out_proj)

    def forward(self, hidden_states: torch.Tensor | None = None, *args, **kwargs):
        if hidden_states is None:
            hidden_states = kwargs["hidden_states"]
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and self.layer_idx is not None and hasattr(cache, "update"):
            batch, seq = hidden_states.shape[0], hidden_states.shape[1]
            empty = hidden_states.new_zeros(batch, 0, seq, self.head_dim)
            cache.update(empty, empty, self.layer_idx)
        context = hidden_states.new_zeros(*hidden_states.shape[:-1], 0)
        if self.out_proj_name is None:
            return context, None
        return getattr(self, self.out_proj_name)(context), None

