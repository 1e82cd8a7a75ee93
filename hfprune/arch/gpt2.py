"""GPT-2: one fused `c_attn` Conv1D produces q, k and v; `c_fc`/`c_proj` Conv1D MLP."""

from __future__ import annotations

from torch import nn

from .base import get_submodule
from .registry import register
from .transformer import ProjSegment, TransformerAdapter


@register
class GPT2Adapter(TransformerAdapter):
    model_types = ("gpt2",)
    layers_paths = ("h", "transformer.h")
    attention_path = "attn"
    q_path = k_path = v_path = "attn.c_attn"
    o_path = "attn.c_proj"
    ffn_in_paths = ("mlp.c_fc",)
    ffn_out_path = "mlp.c_proj"
    config_ffn_key = "n_inner"
    unit_kinds = ("layers", "heads", "neurons", "hidden")
    hidden_stream_starts = ("wte", "wpe")
    hidden_embeddings = ("wte", "wpe")
    hidden_block_norms = ("ln_1", "ln_2")
    hidden_norms = ("ln_f",)
    hidden_heads = {"GPT2Model": (), "GPT2LMHeadModel": ("lm_head",), "GPT2ForSequenceClassification": ("score",),
                    "GPT2ForTokenClassification": ("classifier",)}

    def qkv_segments(self, layer: nn.Module) -> list[ProjSegment]:
        c_attn = get_submodule(layer, self.q_path)
        width = int(c_attn.weight.shape[1]) // 3  # Conv1D weight is (in, out); out = [q | k | v]
        return [ProjSegment(c_attn, role, i * width) for i, role in enumerate(("q", "k", "v"))]

    def set_attention_attrs(self, attention: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        attention.num_heads = num_heads
        attention.split_size = num_heads * head_dim  # forward splits c_attn's output by this width

    def after_build(self, model: nn.Module, record: dict) -> None:
        # With scale_attn_by_inverse_layer_idx the scaling depends on the layer's *original* depth, which a
        # rebuilt model with re-numbered layers would otherwise get wrong.
        if not getattr(model.config, "scale_attn_by_inverse_layer_idx", False):
            return
        for layer, spec in zip(self.layers(model), record["layers"]):
            attn = self.attention(layer)
            if not hasattr(attn, "scaling"):
                continue
            scaling = attn.head_dim**-0.5 if model.config.scale_attn_weights else 1.0
            attn.scaling = scaling / float(spec["source_index"] + 1)
