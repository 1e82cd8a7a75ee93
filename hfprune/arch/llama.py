"""Decoder LLMs with grouped-query attention and a gated MLP: llama, mistral, qwen2, qwen3."""

from __future__ import annotations

from .base import ArchAdapter
from .registry import register


@register
class LlamaAdapter(ArchAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    layers_paths = ("layers", "model.layers")
    attention_path = "self_attn"
    q_path = "self_attn.q_proj"
    k_path = "self_attn.k_proj"
    v_path = "self_attn.v_proj"
    o_path = "self_attn.o_proj"
    ffn_in_paths = ("mlp.gate_proj", "mlp.up_proj")
    ffn_out_path = "mlp.down_proj"
    supports_gqa = True
    # These configs carry an explicit head_dim, so uniform head counts are expressible without hfprune.
    config_heads_key = "num_attention_heads"
    config_kv_heads_key = "num_key_value_heads"
    config_ffn_key = "intermediate_size"
