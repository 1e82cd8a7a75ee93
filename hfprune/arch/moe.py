"""Mixture-of-experts decoders (transformers v5 fused experts): qwen3_moe, qwen2_moe, mixtral, olmoe, flex_olmo.

The `experts` unit kind (`hfprune.units.experts`) reads these entries. Per decoder layer, the sparse MoE block is
`mlp` with a router `mlp.gate` (`weight` `[E, hidden]`, no bias) and fused experts `mlp.experts` (`gate_up_proj`
`[E, 2 * I, hidden]`, gate rows first, `down_proj` `[E, hidden, I]`): expert j is index j along dim 0 of the three.
Routing: softmax over all experts (float32), top-k, renormalised where the family does (`norm_topk_prob`, or always).
qwen2_moe's `shared_expert` (and its sigmoid gate) is always on and never pruned; qwen3_moe / qwen2_moe may have
dense MLP layers (`mlp_only_layers`, `decoder_sparse_step`), which hold no expert. OLMoE / FlexOlmo normalise q and k
over the full width (all heads at once), so their heads cannot be removed one at a time: only experts and layers.

On disk, `save_pretrained` writes each expert as its own tensors (`<moe>.experts.{j}.<gate|up|down>.weight`); the
`fuse_checkpoint` method gives the fused names back for `load_pruned` (a non-uniform plan cannot be loaded by
transformers' own loader, whose config builds every block with one count).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from .base import get_submodule
from .registry import register
from .transformer import TransformerAdapter


class MoEAdapter(TransformerAdapter):
    """A decoder whose MLPs are (some or all) sparse mixtures of experts with fused expert tensors.

    Attributes:
        moe_path (`str`): the MoE block, relative to a layer.
        router_path (`str`): the router (`weight` `[E, hidden]`) relative to a layer.
        experts_path (`str`): the fused experts module relative to a layer.
        expert_tensors (`tuple[str]`): the experts module's tensors whose dim 0 is the expert index.
        config_experts_key (`str`): the config key of the expert count (its `attribute_map` alias may differ).
        renormalise_key (`str | None`): config flag of top-k renormalisation; `None`: the family always renormalises.
        config_dense_layers_key (`str | None`): the config's list of dense MLP layers (qwen: `mlp_only_layers`).
        config_sparse_step_key (`str | None`): every n-th layer is MoE (qwen: `decoder_sparse_step`).
        disk_moe_name (`str`): the MoE block's name in checkpoints (mixtral: `block_sparse_moe`).
        disk_expert_names (`tuple[str, str, str]`): the per-expert gate, up and down tensors' names in checkpoints.
    """

    unit_kinds = ("layers", "heads", "experts")
    family = "a mixture-of-experts transformer"
    layers_paths = ("model.layers", "layers")
    attention_path = "self_attn"
    q_path = "self_attn.q_proj"
    k_path = "self_attn.k_proj"
    v_path = "self_attn.v_proj"
    o_path = "self_attn.o_proj"
    supports_gqa = True
    config_heads_key = "num_attention_heads"
    config_kv_heads_key = "num_key_value_heads"
    moe_path = "mlp"
    router_path = "mlp.gate"
    experts_path = "mlp.experts"
    expert_tensors: tuple[str, ...] = ("gate_up_proj", "down_proj")
    config_experts_key = "num_experts"
    renormalise_key: str | None = "norm_topk_prob"
    config_dense_layers_key: str | None = None
    config_sparse_step_key: str | None = None
    disk_moe_name = "mlp"
    disk_expert_names = ("gate_proj", "up_proj", "down_proj")

    def linear_paths(self) -> tuple[str, ...]:
        """The attention projections (the experts are fused 3-D tensors, not Linear modules)."""
        return tuple(dict.fromkeys((self.q_path, self.k_path, self.v_path, self.o_path)))

    def calibration_stages(self) -> tuple[tuple[str, ...], ...]:
        return ()

    # ----- where the experts are -----------------------------------------------------------------------------------
    def is_moe(self, layer: nn.Module) -> bool:
        return hasattr(get_submodule(layer, self.moe_path), self.experts_path.rpartition(".")[2])

    def router(self, layer: nn.Module) -> nn.Module:
        return get_submodule(layer, self.router_path)

    def experts(self, layer: nn.Module) -> nn.Module:
        return get_submodule(layer, self.experts_path)

    def num_experts(self, layer: nn.Module) -> int:
        """Experts of one layer as it is now (0 for a dense MLP layer)."""
        return int(self.router(layer).weight.shape[0]) if self.is_moe(layer) else 0

    def top_k(self, layer: nn.Module) -> int:
        return int(self.router(layer).top_k)

    def renormalises(self, config) -> bool:
        return True if self.renormalise_key is None else bool(getattr(config, self.renormalise_key, False))

    def set_expert_counts(self, layer: nn.Module, count: int) -> None:
        """The counts the router and the experts' loops read at run time (grouped_mm's histc needs the new one)."""
        self.router(layer).num_experts = count
        self.experts(layer).num_experts = count

    def route(self, logits: torch.Tensor, top_k: int, renormalise: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The family's routing rule on (possibly masked) router logits: `(weights [T, k], indices [T, k])`."""
        probs = F.softmax(logits.float(), dim=-1)
        weights, indices = torch.topk(probs, top_k, dim=-1)
        if renormalise:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return weights.to(logits.dtype), indices

    def expert_output(self, layer: nn.Module, expert: int, x: torch.Tensor) -> torch.Tensor:
        """E_j(x), expert `expert`'s unweighted output for tokens `x` `[T, hidden]`, in `x`'s dtype (the expert's
        weights are cast to it: scoring computes in float64)."""
        experts = self.experts(layer)
        gate_up, down = experts.gate_up_proj[expert].to(x.dtype), experts.down_proj[expert].to(x.dtype)
        gate, up = F.linear(x, gate_up).chunk(2, dim=-1)
        return F.linear(experts.act_fn(gate) * up, down)

    def dense_layer_config(self, config, layers) -> dict:
        """Config keys that say which layers are dense after layers were removed (qwen); `{}` where every layer is
        MoE."""
        if not self.config_dense_layers_key:
            return {}
        dense = [i for i, layer in enumerate(layers) if not self.is_moe(layer)]
        return {self.config_dense_layers_key: dense, self.config_sparse_step_key: 1}

    # ----- the checkpoint layout -----------------------------------------------------------------------------------
    def fuse_checkpoint(self, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """`state` with each layer's per-expert checkpoint tensors fused into the model's `[E, ...]` parameters."""
        gate_n, up_n, down_n = self.disk_expert_names
        pattern = re.compile(rf"^(.*\.)?layers\.(\d+)\.{re.escape(self.disk_moe_name)}\.experts\.(\d+)\."
                             rf"({gate_n}|{up_n}|{down_n})\.weight$")
        parts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
        out = {}
        for key, tensor in state.items():
            match = pattern.match(key)
            if match is None:
                out[key] = tensor
                continue
            prefix = f"{match.group(1) or ''}layers.{match.group(2)}.{self.experts_path}"
            parts.setdefault(prefix, {}).setdefault(int(match.group(3)), {})[match.group(4)] = tensor
        for prefix, experts in parts.items():
            order = sorted(experts)
            if order != list(range(len(order))) or any(len(experts[j]) != 3 for j in order):
                raise ValueError(f"checkpoint: the experts of {prefix} are not numbered 0..{len(order) - 1} with "
                                 f"{gate_n}, {up_n} and {down_n} each (found experts {order})")
            out[f"{prefix}.gate_up_proj"] = torch.stack([torch.cat([experts[j][gate_n], experts[j][up_n]])
                                                         for j in order])
            out[f"{prefix}.down_proj"] = torch.stack([experts[j][down_n] for j in order])
        return out


@register
class QwenMoeAdapter(MoEAdapter):
    """Qwen3-MoE and Qwen1.5/2-MoE (the shared expert of qwen2_moe is never pruned); dense layers are not MoE."""

    model_types = ("qwen3_moe", "qwen2_moe")
    config_experts_key = "num_experts"  # qwen3_moe maps it to num_local_experts (attribute_map)
    config_dense_layers_key = "mlp_only_layers"
    config_sparse_step_key = "decoder_sparse_step"


@register
class MixtralAdapter(MoEAdapter):
    """Mixtral (always renormalises its top-k weights; `block_sparse_moe` with w1/w3/w2 on disk)."""

    model_types = ("mixtral",)
    config_experts_key = "num_local_experts"
    renormalise_key = None
    disk_moe_name = "block_sparse_moe"
    disk_expert_names = ("w1", "w3", "w2")


@register
class OlmoeAdapter(MoEAdapter):
    """OLMoE and FlexOlmo: q/k norms over the full width, so experts and layers only."""

    model_types = ("olmoe", "flex_olmo")
    unit_kinds = ("layers", "experts")
