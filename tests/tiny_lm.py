"""A tiny random Llama with a word-level tokenizer, built in code (no Hub), and a text file to prune it with: shared
by the causal-LM app tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch
import transformers

WORDS = ("the cat dog sat ran on a mat rug red blue big small and then it was very happy sad old new house tree "
         "river saw bird sang song day night").split()


def word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[UNK]": 0, "[EOS]": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]",
                                                pad_token="[EOS]")


def save_tiny_llama(folder: Path, extra_vocab: int = 0, seed: int = 0, **overrides) -> Path:
    """A tiny Llama (4 heads, 2 KV heads, 4 layers; `extra_vocab` more logits than the tokenizer has) + tokenizer."""
    torch.manual_seed(seed)
    settings = dict(vocab_size=len(WORDS) + 2 + extra_vocab, hidden_size=32, intermediate_size=64,
                    num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                    max_position_embeddings=128, pad_token_id=1, eos_token_id=1, bos_token_id=1)
    transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**settings, **overrides})).save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


def write_text(path: Path, lines: int = 300, seed: int = 0) -> Path:
    """`lines` lines of 6 to 14 random words."""
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
                              for _ in range(lines)) + "\n")
    return path
