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
    unit_kinds = ("layers", "heads", "neurons", "hidden")
    # Post-LN: the embedding LayerNorm starts the stream, and each sub-layer's LayerNorm(x + residual) carries it.
    hidden_stream_starts = ("embeddings",)
    hidden_embeddings = ("embeddings.word_embeddings", "embeddings.position_embeddings",
                         "embeddings.token_type_embeddings")
    hidden_block_norms = ("attention.output.LayerNorm", "output.LayerNorm")
    hidden_norms = ("embeddings.LayerNorm",)
    hidden_readers = ("pooler.dense",)  # its output (what the classifier reads) keeps the full width
    # Electra is left out (its embedding width may differ from the stream's: embeddings_project).
    hidden_heads = {"BertModel": (), "BertForSequenceClassification": (), "BertForMultipleChoice": (),
                    "BertForTokenClassification": ("classifier",), "BertForQuestionAnswering": ("qa_outputs",),
                    **{f"{p}Model": () for p in ("Roberta", "XLMRoberta", "Camembert")},
                    **{f"{p}ForSequenceClassification": ("classifier.dense",)
                       for p in ("Roberta", "XLMRoberta", "Camembert")},
                    **{f"{p}ForTokenClassification": ("classifier",) for p in ("Roberta", "XLMRoberta", "Camembert")}}
