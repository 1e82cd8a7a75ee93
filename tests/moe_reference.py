"""Expert saliency written from its definitions with forward hooks, independent of hfprune's code.

For one MoE layer, calibration tokens x (padding excluded), N of them, and X_j the tokens routed to expert j (j is
among the token's top-k):

- `frequency`     f_j = |X_j| / N: the share of tokens routed to j (sums to top_k over the experts).
- `router_weight` w_j = (1/N) * sum_{x in X_j} g_j(x): the mean over all tokens of the sparse gate G(x)_j, which is
  g_j(x) where j is routed and 0 elsewhere (the soft counterpart of `frequency`).
- `reap`          S_j = (1/|X_j|) * sum_{x in X_j} g_j(x) * ||E_j(x)||_2, 0 if X_j is empty (Lasby et al. 2025, "REAP
  the Experts", router-weighted expert activation pruning).
- `ean`           (1/|X_j|) * sum_{x in X_j} ||E_j(x)||_2: the expert activation norm alone, no gate.

E_j(x) = down_j(silu(gate_j x) * up_j x), the expert's unweighted output, computed here from the fused tensors.

Which gate value g_j(x): `gate="applied"` (the default) is the weight the model multiplies E_j(x) by, i.e. the top-k
softmax probability renormalised over the top-k where the family renormalises (qwen3_moe / qwen2_moe / olmoe with
`norm_topk_prob`, mixtral always). That is what CerebrasResearch/reap computes with
`ObserverArgs.renormalize_router_weights=True`, which its README (2026-03-11) calls the correct REAP saliency ("top-k
router logits are now correctly renormalized to sum to 1"). `gate="softmax"` is the probability of the softmax over
all experts, never renormalised: that code's default flag, and its observer's only path for mixtral, whose config
has no `norm_topk_prob` key although mixtral always renormalises.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from moe_models import moe_blocks

KEYS = ("frequency", "router_weight", "reap", "ean")


def expert_output(block, j: int, x: torch.Tensor) -> torch.Tensor:
    """E_j(x) of one MoE block for tokens x [T, hidden], from the fused tensors (gate rows first, then up rows)."""
    gate_up, down = block.experts.gate_up_proj[j], block.experts.down_proj[j]
    inter = gate_up.shape[0] // 2
    return (F.silu(x @ gate_up[:inter].T) * (x @ gate_up[inter:].T)) @ down.T


def routing_records(model, batches) -> dict[int, list[dict[str, torch.Tensor]]]:
    """Per MoE layer, one record per batch: the router's input `x` [T, hidden], its `logits` [T, E], the applied
    `weights` [T, k] and `indices` [T, k], and `valid` [T] (False on padding), captured by forward hooks."""
    assert model.config.hidden_act == "silu"
    records: dict[int, list[dict[str, torch.Tensor]]] = {layer: [] for layer in moe_blocks(model)}
    valid: dict[str, torch.Tensor] = {}

    def hook_for(layer: int):
        def hook(module, args, output):
            x = args[0].reshape(-1, args[0].shape[-1])
            records[layer].append({"x": x.detach(), "logits": output[0].detach(), "weights": output[1].detach(),
                                   "indices": output[2].detach(), "valid": valid["mask"]})
        return hook

    handles = [block.gate.register_forward_hook(hook_for(layer)) for layer, block in moe_blocks(model).items()]
    try:
        with torch.no_grad():
            for batch in batches:
                mask = batch.get("attention_mask", torch.ones_like(batch["input_ids"]))
                valid["mask"] = mask.reshape(-1).bool()
                model(**batch)
    finally:
        for h in handles:
            h.remove()
    return records


def _gate_value(record: dict[str, torch.Tensor], t: int, slot: int, gate: str) -> float:
    if gate == "applied":
        return float(record["weights"][t, slot])
    if gate == "softmax":
        probs = F.softmax(record["logits"][t].double(), dim=-1)
        return float(probs[record["indices"][t, slot]])
    raise ValueError(f"gate must be 'applied' or 'softmax', got {gate!r}")


def reference_scores(model, batches, gate: str = "applied") -> dict[int, dict[str, torch.Tensor]]:
    """`{layer: {"frequency" | "router_weight" | "reap" | "ean": [E] float64, "routed": [E] token counts}}`, token by
    token and slot by slot, straight from the definitions above."""
    blocks = moe_blocks(model)
    out = {}
    with torch.no_grad():
        for layer, records in routing_records(model, batches).items():
            block = blocks[layer]
            n_exp = block.gate.weight.shape[0]
            routed = torch.zeros(n_exp, dtype=torch.float64)
            gate_sum = torch.zeros(n_exp, dtype=torch.float64)
            reap_sum = torch.zeros(n_exp, dtype=torch.float64)
            norm_sum = torch.zeros(n_exp, dtype=torch.float64)
            tokens = 0
            for rec in records:
                for t in range(rec["x"].shape[0]):
                    if not rec["valid"][t]:
                        continue
                    tokens += 1
                    for slot in range(rec["indices"].shape[1]):
                        j = int(rec["indices"][t, slot])
                        g = _gate_value(rec, t, slot, gate)
                        norm = float(torch.linalg.vector_norm(expert_output(block, j, rec["x"][t:t + 1]).double()))
                        routed[j] += 1
                        gate_sum[j] += g
                        reap_sum[j] += g * norm
                        norm_sum[j] += norm
            per_routed = routed.clamp(min=1)
            out[layer] = {"frequency": routed / tokens, "router_weight": gate_sum / tokens,
                          "reap": reap_sum / per_routed, "ean": norm_sum / per_routed, "routed": routed}
    return out
