"""BERT-style encoders: bert, roberta, xlm-roberta, camembert, electra (identical module layout)."""

from __future__ import annotations

from .registry import register
from .transformer import TransformerAdapter


@register
class BertAdapter(TransformerAdapter):
    model_types = ("bert", "roberta", "xlm-roberta", "camembert", "electra")
    layers_paths = ("encoder.layer", "bert.encoder.layer", "roberta.encoder.layer", "electra.encoder.layer",
                    "camembert.encoder.layer", "xlm_roberta.encoder.layer")
    attention_path = "attention.self"
    q_path = "attention.self.query"
    k_path = "attention.self.key"
    v_path = "attention.self.value"
    o_path = "attention.output.dense"
    ffn_in_paths = ("intermediate.dense",)
    ffn_out_path = "output.dense"
    first_token_heads = ("ForSequenceClassification", "ForMultipleChoice")  # their classifiers read position 0 only
    # The output projection sits outside `attention.self`, so a headless layer keeps `attention.output` as it is.
    headless_owns_output = False
    # BERT derives head size from hidden_size / num_attention_heads, so its config cannot express fewer heads.
    config_ffn_key = "intermediate_size"
