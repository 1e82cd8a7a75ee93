"""Tiny random models of every supported family, built in code and seeded."""

from __future__ import annotations

import pytest
import torch
import transformers

VOCAB = 99


def _cfg(family: str):
    common = {"vocab_size": VOCAB, "hidden_size": 32, "num_hidden_layers": 3, "num_attention_heads": 4,
                  "intermediate_size": 48}
    if family in ("bert", "roberta", "xlm-roberta", "camembert", "electra"):
        cls = {"bert": "BertConfig", "roberta": "RobertaConfig", "xlm-roberta": "XLMRobertaConfig",
               "camembert": "CamembertConfig", "electra": "ElectraConfig"}[family]
        extra = {"max_position_embeddings": 64, "hidden_dropout_prob": 0.1, "attention_probs_dropout_prob": 0.1,
                     "num_labels": 3}
        if family == "electra":
            extra["embedding_size"] = 32
        return getattr(transformers, cls)(**common, **extra), f"{cls[:-6]}ForSequenceClassification"
    if family == "distilbert":
        return transformers.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=3, n_heads=4, hidden_dim=48,
                                             max_position_embeddings=64, num_labels=3), \
            "DistilBertForSequenceClassification"
    if family == "gpt2":
        return transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_inner=48,
                                       n_positions=64, num_labels=3, pad_token_id=0), "GPT2LMHeadModel"
    if family == "vit":
        return transformers.ViTConfig(hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                      intermediate_size=48, image_size=16, patch_size=8, num_channels=3,
                                      num_labels=3), "ViTForImageClassification"
    if family in ("llama", "mistral", "qwen2", "qwen3"):
        cls = {"llama": "LlamaConfig", "mistral": "MistralConfig", "qwen2": "Qwen2Config",
               "qwen3": "Qwen3Config"}[family]
        extra = {"num_key_value_heads": 2, "head_dim": 8, "max_position_embeddings": 64, "pad_token_id": 0,
                     "tie_word_embeddings": family == "qwen2"}
        if family == "qwen2":
            extra["attention_bias"] = True  # qwen2 has q/k/v biases in the real models
        arch = {"llama": "Llama", "mistral": "Mistral", "qwen2": "Qwen2", "qwen3": "Qwen3"}[family]
        return getattr(transformers, cls)(**{**common, "num_hidden_layers": 3}, **extra), f"{arch}ForCausalLM"
    raise KeyError(family)


FAMILIES = ["bert", "roberta", "xlm-roberta", "camembert", "electra", "distilbert", "gpt2", "vit", "llama",
            "mistral", "qwen2", "qwen3"]


def make_model(family: str, seed: int = 0):
    torch.manual_seed(seed)
    config, arch = _cfg(family)
    config._attn_implementation = "eager"
    model = getattr(transformers, arch)(config)
    # Random biases everywhere, so a bug that drops or misplaces a bias cannot hide behind zero-initialised ones.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.02)
    return model.eval()


def make_inputs(model, batch: int = 2, seq: int = 7, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    if model.config.model_type == "vit":
        return {"pixel_values": torch.randn(batch, 3, 16, 16, generator=g)}
    ids = torch.randint(1, VOCAB, (batch, seq), generator=g)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, -2:] = 0  # padding, so masked attention paths are exercised
    return {"input_ids": ids, "attention_mask": mask}


def logits_of(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny models gain nothing from intra-op threads, and on a busy 2-core machine their spin-waits cost seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture(scope="session")
def smollm2(tmp_path_factory):
    """SmolLM2-135M-Instruct converted once per session from its GGUF to a plain safetensors folder.

    Returns `(folder, input_ids, logits)`: the logits of the GGUF-loaded model on a fixed input, to check that the
    saved folder is the same model.
    """
    pytest.importorskip("gguf", reason="the gguf package reads GGUF files (dev extra)")
    from tests.smollm import GGUF_FILE, SKIP_REASON, smollm2_gguf_folder

    source = smollm2_gguf_folder()
    if source is None:
        pytest.skip(SKIP_REASON)
    import transformers

    import hfprune

    model = transformers.AutoModelForCausalLM.from_pretrained(source, gguf_file=GGUF_FILE)
    tokenizer = transformers.AutoTokenizer.from_pretrained(source, gguf_file=GGUF_FILE)
    ids = tokenizer("The quick brown fox jumps over the lazy dog.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logits = model(input_ids=ids).logits
    folder = tmp_path_factory.mktemp("smollm2") / "model"
    hfprune.save_pruned(model, folder, tokenizer=tokenizer)  # refused by plain save_pretrained (GGUF quantizer)
    return folder, ids, logits
