"""ViT (transformers v5 layout: `q_proj`/`k_proj`/`v_proj`/`o_proj` attention and an `fc1`/`fc2` MLP)."""

from __future__ import annotations

from .registry import register
from .transformer import TransformerAdapter


@register
class ViTAdapter(TransformerAdapter):
    model_types = ("vit",)
    layers_paths = ("layers", "vit.layers", "encoder.layer", "vit.encoder.layer")
    attention_path = "attention"
    q_path = "attention.q_proj"
    k_path = "attention.k_proj"
    v_path = "attention.v_proj"
    o_path = "attention.o_proj"
    ffn_in_paths = ("mlp.fc1",)
    ffn_out_path = "mlp.fc2"
    first_token_heads = ("ForImageClassification",)  # their classifiers read position 0 only
    config_heads_key = "num_attention_heads"
    config_ffn_key = "intermediate_size"
    unit_kinds = ("layers", "heads", "neurons", "hidden")
    hidden_stream_starts = ("embeddings",)
    hidden_tensors = ("embeddings.cls_token", "embeddings.position_embeddings", "embeddings.mask_token")
    hidden_producers = ("embeddings.patch_embeddings.projection",)
    hidden_block_norms = ("layernorm_before", "layernorm_after")
    hidden_norms = ("layernorm",)
    hidden_readers = ("pooler.dense",)
    hidden_heads = {"ViTModel": (), "ViTForImageClassification": ("classifier",)}
