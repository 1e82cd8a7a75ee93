"""DistilBERT: `q_lin`/`k_lin`/`v_lin`/`out_lin` attention and a `lin1`/`lin2` FFN."""

from __future__ import annotations

from .registry import register
from .transformer import TransformerAdapter


@register
class DistilBertAdapter(TransformerAdapter):
    model_types = ("distilbert",)
    layers_paths = ("transformer.layer", "distilbert.transformer.layer")
    attention_path = "attention"
    q_path = "attention.q_lin"
    k_path = "attention.k_lin"
    v_path = "attention.v_lin"
    o_path = "attention.out_lin"
    ffn_in_paths = ("ffn.lin1",)
    ffn_out_path = "ffn.lin2"
    first_token_heads = ("ForSequenceClassification", "ForMultipleChoice")  # their classifiers read position 0 only
    # head size is dim / n_heads, as in BERT; hidden_dim is the FFN width.
    config_ffn_key = "hidden_dim"
    unit_kinds = ("layers", "heads", "neurons", "hidden")
    hidden_stream_starts = ("embeddings",)
    hidden_embeddings = ("embeddings.word_embeddings", "embeddings.position_embeddings")
    hidden_block_norms = ("sa_layer_norm", "output_layer_norm")
    hidden_norms = ("embeddings.LayerNorm",)
    hidden_heads = {"DistilBertModel": (), "DistilBertForSequenceClassification": ("pre_classifier",),
                    "DistilBertForTokenClassification": ("classifier",),
                    "DistilBertForQuestionAnswering": ("qa_outputs",)}
