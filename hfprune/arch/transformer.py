"""Transformer families: where the blocks, the attention projections and the FFN are.

The unit kinds `layers`, `heads` and `neurons` (`hfprune.units`) read these paths: a head is `head_dim` output rows of
q, k and v (a fused projection holds them at offsets, `ProjSegment`) and as many input columns of o; an FFN neuron is
an output row of every FFN input projection and an input column of the FFN output projection; a layer is a block.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import ArchAdapter, get_submodule, set_submodule


@dataclass(frozen=True)
class ProjSegment:
    """A slice of a projection's *output* rows that holds the query, key or value heads.

    Separate projections have `offset=0`; a fused projection (GPT-2's `c_attn`) yields three segments of one module.
    """

    module: nn.Module
    role: str  # "q", "k" or "v"
    offset: int = 0


class TransformerAdapter(ArchAdapter):
    """A transformer family: blocks of attention (q/k/v/o projections) and an FFN.

    Subclasses set the class attributes below (dotted paths relative to a layer / to the model) and override the
    few methods whose logic differs (fused projections, attribute names read by the forward pass).

    Attributes:
        layers_paths (`tuple[str]`): candidate paths of the `nn.ModuleList` of blocks, tried in order (the task heads
            put the base model under different prefixes).
        attention_path (`str`): the module whose output is the per-head context (replaced when a layer loses all heads).
        q_path, k_path, v_path, o_path (`str`): projections, relative to the layer.
        ffn_in_paths (`tuple[str]`): projections whose output rows are FFN neurons (`up` and `gate` for gated MLPs).
        ffn_out_path (`str`): the down projection whose input columns are FFN neurons.
        headless_owns_output (`bool`): whether `o_path` lives inside `attention_path` (then the replacement for a
            headless attention holds the empty output projection itself).
    """

    unit_kinds = ("layers", "heads", "neurons")
    family = "a transformer"
    layers_paths: tuple[str, ...] = ()
    attention_path: str = ""
    q_path: str = ""
    k_path: str = ""
    v_path: str = ""
    o_path: str = ""
    ffn_in_paths: tuple[str, ...] = ()
    ffn_out_path: str = ""
    headless_owns_output: bool = True
    # Config keys that can express a uniform structure (None: the family's config cannot express it).
    config_heads_key: str | None = None
    config_kv_heads_key: str | None = None
    config_ffn_key: str | None = None
    supports_gqa: bool = False
    # Task heads (class-name suffixes) that read only the first token of the last block's output, the [CLS]
    # position: mask tuning fits the last layer's FFN on that token alone (Kwon et al. 2022 do so for
    # classification), since no other position of that output reaches the loss.
    first_token_heads: tuple[str, ...] = ()
    # The residual width (the `hidden` unit kind, `hfprune.units.hidden`). Paths relative to the base model
    # (`model.base_model`) unless said otherwise; every entry is optional (a family without it has none).
    hidden_stream_starts: tuple[str, ...] = ()  # modules whose output starts the residual stream (gated there)
    hidden_embeddings: tuple[str, ...] = ()  # nn.Embedding tables: their columns are hidden channels
    hidden_tensors: tuple[str, ...] = ()  # raw parameters whose last dim is hidden ("embeddings.cls_token")
    hidden_producers: tuple[str, ...] = ()  # Conv2d / Linear whose output rows are hidden (ViT's patch projection)
    hidden_block_norms: tuple[str, ...] = ()  # per-block norms on the stream, relative to the block
    hidden_norms: tuple[str, ...] = ()  # model-level norms on the stream (embedding norm, final norm)
    hidden_readers: tuple[str, ...] = ()  # model-level Linear layers reading the stream (BERT's / ViT's pooler)
    # Head classes (class-name suffix) -> paths relative to the model (not the base model) of the layers that read
    # the stream (input columns): "lm_head", "score", "classifier". A class not listed refuses hidden plans.
    hidden_heads: dict[str, tuple[str, ...]] = {}
    config_hidden_key: str | None = None  # set where the plain config can say a new width (explicit head_dim)
    # model_type -> {config flag: layer-relative projections it gives a bias}: where compensation
    # (`hfprune.compensation`) can add a bias to a bias-free projection and the config still says the model.
    bias_flags: dict[str, dict[str, tuple[str, ...]]] = {}

    # ----- where things are -------------------------------------------------------------------------------------
    def reads_first_token_only(self, model: nn.Module) -> bool:
        """Whether `model`'s task head uses only position 0 of the last block's output (a [CLS] classifier)."""
        return type(model).__name__.endswith(self.first_token_heads) if self.first_token_heads else False

    def layers_path(self, model: nn.Module) -> str:
        for path in self.layers_paths:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                continue
            if isinstance(module, nn.ModuleList):
                return path
        raise ValueError(
            f"{type(self).__name__}: none of {list(self.layers_paths)} is an nn.ModuleList in {type(model).__name__}"
        )

    def layers(self, model: nn.Module) -> nn.ModuleList:
        return model.get_submodule(self.layers_path(model))

    def set_layers(self, model: nn.Module, layers: nn.ModuleList) -> None:
        set_submodule(model, self.layers_path(model), layers)

    def attention(self, layer: nn.Module) -> nn.Module:
        return get_submodule(layer, self.attention_path)

    def qkv_segments(self, layer: nn.Module) -> list[ProjSegment]:
        return [ProjSegment(get_submodule(layer, p), r) for p, r in ((self.q_path, "q"), (self.k_path, "k"),
                                                                      (self.v_path, "v"))]

    def out_proj(self, layer: nn.Module) -> nn.Module:
        return get_submodule(layer, self.o_path)

    def ffn_in(self, layer: nn.Module) -> list[nn.Module]:
        return [get_submodule(layer, p) for p in self.ffn_in_paths]

    def ffn_out(self, layer: nn.Module) -> nn.Module:
        return get_submodule(layer, self.ffn_out_path)

    def linear_paths(self) -> tuple[str, ...]:
        """Layer-relative paths of every attention and FFN projection (the default targets of weight pruning)."""
        return tuple(dict.fromkeys((self.q_path, self.k_path, self.v_path, self.o_path, *self.ffn_in_paths,
                                    self.ffn_out_path)))

    def calibration_stages(self) -> tuple[tuple[str, ...], ...]:
        """Layer-relative paths of the projections, grouped in the order a block's forward produces their inputs.

        Used by true-sequential calibration (`sparsify(..., criterion="wanda" | "sparsegpt", true_sequential=True)`):
        each stage's input statistics are collected after the earlier stages of the same block were pruned. The
        order is the transformer block's data flow: q/k/v (the block input) -> the attention output projection (the
        attention context) -> the FFN input projections (the post-attention hidden state) -> the FFN output
        projection (the FFN neurons). Projections in one stage read the same input, so none of them changes another
        one's input. An empty tuple (a family without attention/FFN roles) means one stage.
        """
        if not (self.q_path and self.o_path and self.ffn_in_paths and self.ffn_out_path):
            return ()
        stages, seen = [], set()
        for group in ((self.q_path, self.k_path, self.v_path), (self.o_path,), self.ffn_in_paths,
                      (self.ffn_out_path,)):
            paths = tuple(p for p in dict.fromkeys(group) if p and p not in seen)  # GPT-2: q = k = v = c_attn
            seen.update(paths)
            if paths:
                stages.append(paths)
        return tuple(stages)

    # ----- geometry (read from the live modules, so it stays true after surgery) -----------------------------------
    def head_dim(self, model: nn.Module) -> int:
        config = model.config
        head_dim = getattr(config, "head_dim", None)
        if head_dim:
            return int(head_dim)
        return config.hidden_size // self.base_num_heads(config)

    def base_num_heads(self, config) -> int:
        return int(config.num_attention_heads)

    def base_num_kv_heads(self, config) -> int:
        return int(getattr(config, "num_key_value_heads", None) or self.base_num_heads(config))

    def num_heads(self, model: nn.Module, layer: nn.Module) -> int:
        return _in_features(self.out_proj(layer)) // self.head_dim(model)

    def num_kv_heads(self, model: nn.Module, layer: nn.Module) -> int:
        if not self.supports_gqa or self.num_heads(model, layer) == 0:
            return self.num_heads(model, layer)
        k = next(s for s in self.qkv_segments(layer) if s.role == "k")
        return _out_features(k.module) // self.head_dim(model)

    def intermediate_size(self, layer: nn.Module) -> int:
        return _in_features(self.ffn_out(layer))

    def hidden_size(self, model: nn.Module) -> int:
        return int(model.config.hidden_size)

    def bias_flag_modules(self, model: nn.Module, flag: str) -> list[nn.Module]:
        """Every module (all layers) that config flag `flag` gives a bias, for `model`'s model type."""
        paths = self.bias_flags.get(model.config.model_type, {}).get(flag, ())
        out = []
        for block in self.layers(model):
            for path in paths:
                try:
                    out.append(get_submodule(block, path))
                except AttributeError:  # a headless layer has no q/k/v
                    continue
        return out

    def bias_flag_of(self, model: nn.Module, module: nn.Module) -> str | None:
        """The config flag that would give `module` a bias, or `None`."""
        for flag in self.bias_flags.get(model.config.model_type, {}):
            if any(m is module for m in self.bias_flag_modules(model, flag)):
                return flag
        return None

    def hidden_head_paths(self, model: nn.Module) -> tuple[str, ...] | None:
        """The layers of `model`'s task head that read the residual stream, or `None` for an unknown head class."""
        name = type(model).__name__
        for suffix, paths in sorted(self.hidden_heads.items(), key=lambda kv: -len(kv[0])):
            if name.endswith(suffix):
                return paths
        return None

    # ----- attributes the forward pass reads -----------------------------------------------------------------------
    def set_attention_attrs(self, attention: nn.Module, num_heads: int, num_kv_heads: int, head_dim: int) -> None:
        """Update the attributes the family's attention forward reads after its projections were resized."""
        for name in ("num_attention_heads", "num_heads", "n_heads"):
            if hasattr(attention, name):
                setattr(attention, name, num_heads)
        if hasattr(attention, "all_head_size"):
            attention.all_head_size = num_heads * head_dim
        if hasattr(attention, "num_key_value_heads"):
            attention.num_key_value_heads = num_kv_heads
        if hasattr(attention, "num_key_value_groups") and num_kv_heads:
            attention.num_key_value_groups = num_heads // num_kv_heads

    def set_ffn_attrs(self, layer: nn.Module, size: int) -> None:
        # Linear / Conv1D sizes are kept by the slicing helpers; some MLPs also cache their width.
        mlp_parent = self.ffn_out_path.rpartition(".")[0]
        mlp = get_submodule(layer, mlp_parent)
        if hasattr(mlp, "intermediate_size"):
            mlp.intermediate_size = size


def _in_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.in_features
    return int(module.weight.shape[0])  # transformers' Conv1D stores weight as (in, out)


def _out_features(module: nn.Module) -> int:
    if isinstance(module, nn.Linear):
        return module.out_features
    return int(module.weight.shape[1])
