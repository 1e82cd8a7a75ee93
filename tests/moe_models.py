"""Tiny random seeded mixture-of-experts models of four transformers v5 MoE families, and expert pruning by hand.

This is test-side reference material for the `experts` unit kind (issue 21): it writes down, independently of
hfprune, (1) what a tiny model of each family looks like, (2) the family's routing rule read from its modeling code,
(3) the reversible gate (router logit forced to -inf before top-k) and (4) the same experts removed by slicing the
fused tensors and the router and rewriting the config. `tests/test_moe_reference.py` proves (3) == (4).

Layout shared by the four families (transformers v5.25): `model.model.layers[i].mlp` is the sparse MoE block with
`.gate` (router: `weight` `[E, hidden]`, no bias) and `.experts` (`gate_up_proj` `[E, 2 * I, hidden]`, gate rows
first, then up rows; `down_proj` `[E, hidden, I]`); qwen2_moe adds an always-on `shared_expert` (an MLP) scaled by
`sigmoid(shared_expert_gate(x))`, never pruned. qwen3_moe / qwen2_moe can mix dense MLP layers in
(`mlp_only_layers`, `decoder_sparse_step`); mixtral / olmoe are MoE in every layer.
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as F
import transformers

VOCAB = 99
FAMILIES = ("qwen3_moe", "qwen2_moe", "mixtral", "olmoe")
NUM_EXPERTS = 8
TOP_K = 2

_COMMON = {"vocab_size": VOCAB, "hidden_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
           "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
           "num_experts_per_tok": TOP_K}

# family -> (config class, model class, extra config keys, config key holding the expert count on disk)
_SPECS = {
    # Qwen3-30B-A3B routes with norm_topk_prob=True; layer 1 is a dense MLP (mlp_only_layers), layers 0 and 2 MoE.
    "qwen3_moe": ("Qwen3MoeConfig", "Qwen3MoeForCausalLM",
                  {"num_hidden_layers": 3, "head_dim": 8, "intermediate_size": 48, "moe_intermediate_size": 16,
                   "num_experts": NUM_EXPERTS, "norm_topk_prob": True, "mlp_only_layers": [1]},
                  "num_local_experts"),
    # Qwen1.5-MoE: norm_topk_prob=False, q/k/v biases, a shared expert with its sigmoid gate.
    "qwen2_moe": ("Qwen2MoeConfig", "Qwen2MoeForCausalLM",
                  {"num_hidden_layers": 3, "intermediate_size": 48, "moe_intermediate_size": 16,
                   "shared_expert_intermediate_size": 24, "num_experts": NUM_EXPERTS, "norm_topk_prob": False,
                   "qkv_bias": True, "mlp_only_layers": [1]},
                  "num_experts"),
    # Mixtral always renormalises the top-k weights (no norm_topk_prob key); the expert width is intermediate_size.
    "mixtral": ("MixtralConfig", "MixtralForCausalLM",
                {"num_hidden_layers": 2, "intermediate_size": 16, "num_local_experts": NUM_EXPERTS},
                "num_local_experts"),
    # OLMoE: norm_topk_prob=False, q/k norms over the full width; the expert width is intermediate_size.
    "olmoe": ("OlmoeConfig", "OlmoeForCausalLM",
              {"num_hidden_layers": 2, "intermediate_size": 16, "num_experts": NUM_EXPERTS, "norm_topk_prob": False},
              "num_experts"),
}


def moe_config(family: str):
    config_cls, _, extra, _ = _SPECS[family]
    config = getattr(transformers, config_cls)(**_COMMON, **extra)
    config._attn_implementation = "eager"
    return config


def count_key(family: str) -> str:
    """The key that holds the expert count in the family's config.json."""
    return _SPECS[family][3]


def _reinit(model, seed: int) -> None:
    """Weights large enough that routing is decisive and the experts move the logits (the HF default std 0.02 makes
    every expert output tiny, so `masked == pruned` would hold even for a wrong gate); random biases everywhere."""
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("mlp.gate.weight"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.5)
            elif ".experts." in name:
                fan_in = p.shape[-1]
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / fan_in ** 0.5))
            elif name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)


def make_moe_model(family: str, seed: int = 0, experts_implementation: str | None = None):
    """A tiny random model of `family` in eval mode: hidden 32, 8 experts, top-2, eager attention."""
    torch.manual_seed(seed)
    config = moe_config(family)
    model = getattr(transformers, _SPECS[family][1])(config)
    _reinit(model, seed)
    if experts_implementation is not None:
        model.set_experts_implementation(experts_implementation)
    return model.eval()


def moe_blocks(model) -> dict[int, torch.nn.Module]:
    """Decoder layer index -> sparse MoE block (dense MLP layers left out)."""
    return {i: layer.mlp for i, layer in enumerate(model.model.layers) if hasattr(layer.mlp, "experts")}


def renormalises(model) -> bool:
    """Whether the family divides the top-k probabilities by their sum (read from each router's code)."""
    return getattr(model.config, "norm_topk_prob", True)  # mixtral has no key: it always renormalises


def route(logits: torch.Tensor, top_k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The routing rule of the four families: softmax over all experts (float32), top-k, optionally renormalised.
    Returns (weights [T, k] in the logits' dtype, indices [T, k])."""
    probs = F.softmax(logits.float(), dim=-1)
    weights, indices = torch.topk(probs, top_k, dim=-1)
    if renormalise:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    return weights.to(logits.dtype), indices


@contextlib.contextmanager
def masked_experts(model, removed: dict[int, list[int]]):
    """The reversible gate: the removed experts' router logits are -inf before softmax and top-k, so they receive
    no token and the kept experts get exactly the probabilities of a router without them. A forward hook on each
    router recomputes (weights, indices) from its returned logits with the family's rule."""
    blocks, handles = moe_blocks(model), []

    def hook_for(layer: int):
        def hook(module, args, output):
            logits = output[0].clone()
            logits[:, removed.get(layer, [])] = float("-inf")
            weights, indices = route(logits, module.top_k, renormalises(model))
            return logits, weights, indices
        return hook

    try:
        for layer, block in blocks.items():
            handles.append(block.gate.register_forward_hook(hook_for(layer)))
        yield model
    finally:
        for h in handles:
            h.remove()


def _slice_block(block, keep: torch.Tensor) -> None:
    """Keep experts `keep` (ascending) of one MoE block in place: router rows, fused tensors, module counts."""
    experts, gate = block.experts, block.gate
    gate.weight = torch.nn.Parameter(gate.weight.data[keep].clone())
    experts.gate_up_proj = torch.nn.Parameter(experts.gate_up_proj.data[keep].clone())
    experts.down_proj = torch.nn.Parameter(experts.down_proj.data[keep].clone())
    # Both are read at run time: the one-hot / histc of the experts' loops and grouped_mm use experts.num_experts.
    experts.num_experts = gate.num_experts = len(keep)


def prune_by_hand(model, removed: dict[int, list[int]], family: str):
    """A copy of `model` without the `removed` experts. A uniform plan (same count removed in every MoE layer) gives
    a model rebuilt from a plain config with the new count and loaded strictly from the sliced state dict; other
    plans are sliced in place (the config cannot say per-layer counts)."""
    pruned = copy.deepcopy(model)
    blocks = moe_blocks(pruned)
    for layer, block in blocks.items():
        drop = set(removed.get(layer, []))
        keep = torch.tensor([j for j in range(block.gate.weight.shape[0]) if j not in drop], dtype=torch.long)
        _slice_block(block, keep)
    counts = {block.gate.weight.shape[0] for block in blocks.values()}
    if len(counts) > 1:
        return pruned
    config = copy.deepcopy(model.config)
    setattr(config, count_key(family), counts.pop())
    rebuilt = type(model)(config)
    rebuilt.load_state_dict(pruned.state_dict(), strict=True)
    rebuilt.set_experts_implementation(model.config._experts_implementation)
    return rebuilt.eval()


def random_plan(model, seed: int, uniform: bool = False) -> dict[int, list[int]]:
    """Random experts to remove in every MoE layer, keeping at least top-k (uniform: the same count everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    blocks = moe_blocks(model)
    most = NUM_EXPERTS - TOP_K
    fixed = int(torch.randint(1, most + 1, (1,), generator=gen))
    plan = {}
    for layer in blocks:
        n = fixed if uniform else int(torch.randint(1, most + 1, (1,), generator=gen))
        plan[layer] = sorted(torch.randperm(NUM_EXPERTS, generator=gen)[:n].tolist())
    return plan


def token_batch(seed: int = 0, batch: int = 2, seq: int = 12) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, VOCAB, (batch, seq), generator=gen)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
