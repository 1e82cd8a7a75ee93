"""Calibration batches for causal LMs and token-weighted perplexity."""

from __future__ import annotations

import math

import pytest
import torch
import transformers

import hfprune
from hfprune.calibration import token_stream

VOCAB = 61


class CharTokenizer:
    """A stand-in tokenizer: one token per character (enough to test sampling, no files needed)."""

    def __call__(self, texts, add_special_tokens=False):
        if isinstance(texts, str):
            return {"input_ids": [ord(c) % VOCAB for c in texts]}
        return {"input_ids": [[ord(c) % VOCAB for c in t] for t in texts]}


def tiny_llama(seed=0, positions=64):
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                                      max_position_embeddings=positions)
    return transformers.LlamaForCausalLM(config).eval()


TEXTS = [f"sentence number {i} says something about pruning weights." for i in range(40)]


def test_batches_are_seeded_windows_of_the_token_stream():
    tok = CharTokenizer()
    stream = token_stream(tok, TEXTS)
    batches = hfprune.calibration_batches(tok, TEXTS, num_samples=10, seq_len=32, seed=3, batch_size=4)
    assert [b["input_ids"].shape for b in batches] == [(4, 32), (4, 32), (2, 32)]
    again = hfprune.calibration_batches(tok, TEXTS, num_samples=10, seq_len=32, seed=3, batch_size=4)
    other = hfprune.calibration_batches(tok, TEXTS, num_samples=10, seq_len=32, seed=4, batch_size=4)
    assert all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, again))
    assert not all(torch.equal(a["input_ids"], b["input_ids"]) for a, b in zip(batches, other))
    text = stream.tolist()
    for batch in batches:
        assert torch.equal(batch["labels"], batch["input_ids"])
        assert batch["attention_mask"].all()
        for row in batch["input_ids"].tolist():  # every window is a contiguous piece of the stream
            assert any(text[s:s + 32] == row for s in range(len(text) - 31))


def test_sources_file_list_and_dataset_give_the_same_batches(tmp_path):
    import datasets

    tok = CharTokenizer()
    path = tmp_path / "calib.txt"
    path.write_text("\n\n".join(TEXTS), encoding="utf-8")
    from_list = hfprune.calibration_batches(tok, TEXTS, num_samples=6, seq_len=40)
    from_file = hfprune.calibration_batches(tok, path, num_samples=6, seq_len=40)
    from_ds = hfprune.calibration_batches(tok, datasets.Dataset.from_dict({"sentence": TEXTS}), num_samples=6,
                                          seq_len=40, text_column="sentence")
    for a, b, c in zip(from_list, from_file, from_ds):
        assert torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["input_ids"], c["input_ids"])


def test_bad_calibration_input_is_refused(tmp_path):
    tok = CharTokenizer()
    short = tmp_path / "short.txt"
    short.write_text("too short", encoding="utf-8")
    with pytest.raises(ValueError, match="shorter than one sample of seq_len=32"):
        hfprune.calibration_batches(tok, short, seq_len=32)
    with pytest.raises(ValueError, match="seq_len=128 is longer than the 64 positions of LlamaForCausalLM"):
        hfprune.calibration_batches(tok, TEXTS, seq_len=128, model=tiny_llama())
    with pytest.raises(ValueError, match="seq_len=128 is longer than the 100 positions"):
        hfprune.calibration_batches(tok, TEXTS, seq_len=128, max_positions=100)
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        hfprune.calibration_batches(tok, tmp_path / "missing.txt")
    with pytest.raises(ValueError, match="no column 'text'"):
        import datasets
        hfprune.calibration_batches(tok, datasets.Dataset.from_dict({"sentence": TEXTS}))
    with pytest.raises(ValueError, match="num_samples"):
        hfprune.calibration_batches(tok, TEXTS, num_samples=0)


def _hand_nll(model, ids):
    """Sum of -log p(token_t | tokens_<t) and the count, computed token by token from one forward."""
    logp = torch.log_softmax(model(input_ids=ids).logits.double(), dim=-1)
    total, count = 0.0, 0
    for row in range(ids.shape[0]):
        for t in range(1, ids.shape[1]):
            total -= float(logp[row, t - 1, ids[row, t]])
            count += 1
    return total, count


def test_perplexity_is_token_weighted_and_matches_a_hand_computation():
    model = tiny_llama()
    torch.manual_seed(1)
    batches = [{"input_ids": torch.randint(0, VOCAB, (2, 20))}, {"input_ids": torch.randint(0, VOCAB, (1, 40))}]
    with torch.no_grad():
        parts = [_hand_nll(model, b["input_ids"]) for b in batches]
    expected = math.exp(sum(p[0] for p in parts) / sum(p[1] for p in parts))  # 38 + 39 tokens, not a batch mean
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    assert hfprune.perplexity(model, batches) == pytest.approx(expected, rel=1e-5)
    assert model.training  # mode restored
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    # Labels of -100 and padding are not scored.
    ids = batches[1]["input_ids"]
    labels = ids.clone()
    labels[:, :21] = -100
    with torch.no_grad():
        logp = torch.log_softmax(model.eval()(input_ids=ids).logits.double(), dim=-1)
    nll = -sum(float(logp[0, t - 1, ids[0, t]]) for t in range(21, 40))
    assert hfprune.perplexity(model, [{"input_ids": ids, "labels": labels}]) == pytest.approx(
        math.exp(nll / 19), rel=1e-5)


def test_perplexity_stride_scores_every_token_once_with_window_context():
    model = tiny_llama(positions=64)
    torch.manual_seed(2)
    ids = torch.randint(0, VOCAB, (1, 50))
    # Window of 16 moving by 8: token t is scored by the first window that reaches it, with the window as context.
    total, count, prev_end = 0.0, 0, 0
    with torch.no_grad():
        for begin in range(0, 50, 8):
            end = min(begin + 16, 50)
            logp = torch.log_softmax(model(input_ids=ids[:, begin:end]).logits.double(), dim=-1)
            for t in range(max(prev_end, 1), end):
                total -= float(logp[0, t - begin - 1, ids[0, t]])
                count += 1
            prev_end = end
            if end == 50:
                break
    assert count == 49
    assert hfprune.perplexity(model, ids, stride=8, max_length=16) == pytest.approx(math.exp(total / count),
                                                                                    rel=1e-5)
    # A window as long as the sequence is the plain computation.
    assert hfprune.perplexity(model, ids, stride=8, max_length=64) == pytest.approx(hfprune.perplexity(model, ids))
    with pytest.raises(ValueError, match="longer than the 64 positions"):
        hfprune.perplexity(model, torch.randint(0, VOCAB, (1, 80)))
    with pytest.raises(ValueError, match="stride=32 is larger than the window"):
        hfprune.perplexity(model, ids, stride=32, max_length=16)
