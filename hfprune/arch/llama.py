"""Decoder LLMs with grouped-query attention and a gated MLP: llama, mistral, qwen2, qwen3."""

from __future__ import annotations

from .registry import register
from .transformer import TransformerAdapter


@register
class LlamaAdapter(TransformerAdapter):
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
    # Llama's attention_bias / mlp_bias give every projection they govern a bias; qwen3's attention_bias too. Mistral
    # and qwen2 have no such flag (qwen2's q/k/v biases are always there).
    bias_flags = {"llama": {"attention_bias": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj"),
                            "mlp_bias": ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")},
                  "qwen3": {"attention_bias": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                               "self_attn.o_proj")}}
    config_hidden_key = "hidden_size"  # with the explicit head_dim the new width is plain config
    unit_kinds = ("layers", "heads", "neurons", "hidden")
    hidden_stream_starts = ("embed_tokens",)
    hidden_embeddings = ("embed_tokens",)
    hidden_block_norms = ("input_layernorm", "post_attention_layernorm")  # qwen3's q_norm / k_norm are per head
    hidden_norms = ("norm",)
    hidden_heads = {"Model": (), "ForCausalLM": ("lm_head",), "ForSequenceClassification": ("score",),
                    "ForTokenClassification": ("score",)}

    # Llama classes -> the Mistral classes with the same weight names (LlamaForQuestionAnswering is left out: its
    # base model sits under `transformer`, Mistral's under `model`).
    _MISTRAL_CLASSES = {"LlamaForCausalLM": "MistralForCausalLM", "LlamaModel": "MistralModel",
                        "LlamaForSequenceClassification": "MistralForSequenceClassification",
                        "LlamaForTokenClassification": "MistralForTokenClassification"}

    def plain_stand_in(self, config, architectures: list[str]) -> tuple[dict | None, str]:
        """Llama as Mistral: transformers v5's `LlamaConfig` refuses `hidden_size % num_attention_heads != 0` although
        `LlamaAttention` uses the explicit `head_dim`; `MistralConfig` accepts it. The Mistral modeling code is the
        Llama code (RMSNorm, rotary embedding with every rope type, gated MLP, GQA attention) minus the biases, plus a
        sliding window that `sliding_window=None` turns off, so without biases the logits are the same.
        """
        if config.model_type != "llama":
            return None, f"{config.model_type!r} configs accept uniform head counts themselves"
        blockers = [f"{key}=True (Mistral has no {what} bias)" for key, what in (("attention_bias", "attention"),
                                                                                ("mlp_bias", "MLP"))
                    if getattr(config, key, False)]
        archs = list(architectures)
        missing = [a for a in archs if a not in self._MISTRAL_CLASSES]
        if missing:
            blockers.append(f"no Mistral class with the same weight names for {missing}")
        if blockers:
            return None, "the Mistral classes cannot stand in: " + "; ".join(blockers)
        changes = {"model_type": "mistral", "architectures": [self._MISTRAL_CLASSES[a] for a in archs],
                   "drop": ("attention_bias", "mlp_bias", "pretraining_tp"), "set": {"sliding_window": None}}
        reason = ("transformers v5's LlamaConfig rejects hidden_size % num_attention_heads != 0; the Mistral classes "
                  "run the same computation (no attention/MLP bias, sliding_window=None) and their config accepts "
                  "these head counts")
        return changes, reason
