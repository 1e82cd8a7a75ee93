"""Parameter and FLOPs counts per layer, and measured CPU latency, of a (pruned) model.

FLOPs are counted analytically from the live module shapes, so they follow surgery exactly: every linear
projection of a block costs `2 * seq_len * in * out`, attention adds `2 * 2 * seq_len**2 * heads * head_dim`
(scores and weighted sum). Linear modules outside the blocks (pooler, classifier) are counted for one token, which is
what a sequence classifier applies them to.
"""

from __future__ import annotations

import copy
import statistics
import time

import torch
from torch import nn

from .arch import get_adapter


def _linear_shape(module: nn.Module) -> tuple[int, int] | None:
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D" and getattr(module, "weight", None) is not None:
        return int(module.weight.shape[0]), int(module.weight.shape[1])  # transformers' Conv1D: (in, out)
    return None


def _linear_flops(root: nn.Module, tokens: int) -> int:
    total = 0
    for module in root.modules():
        shape = _linear_shape(module)
        if shape is not None:
            total += 2 * tokens * shape[0] * shape[1]
    return total


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def layer_costs(model: nn.Module, seq_len: int = 128) -> list[dict]:
    """Per block: `heads`, `ffn`, `params` and `flops` (one sequence of `seq_len` tokens).

    Example:
        ```python
        >>> [c["flops"] for c in layer_costs(model, seq_len=128)]
        ```
    """
    adapter = get_adapter(model)
    head_dim = adapter.head_dim(model)
    out = []
    for block in adapter.layers(model):
        heads = adapter.num_heads(model, block)
        attention = 4 * seq_len * seq_len * heads * head_dim
        out.append({"heads": heads, "ffn": adapter.intermediate_size(block), "params": _num_params(block),
                    "flops": _linear_flops(block, seq_len) + attention})
    return out


def model_costs(model: nn.Module, seq_len: int = 128) -> dict:
    """Whole-model counts: `params` (unique), `layer_params`, `flops` per sequence, and `per_layer` (see `layer_costs`).

    Example:
        ```python
        >>> costs = model_costs(model, seq_len=128)
        >>> costs["params"], costs["flops"]
        ```
    """
    per_layer = layer_costs(model, seq_len)
    layers = get_adapter(model).layers(model)
    in_layers = {id(m) for m in layers.modules()}
    other = sum(2 * s[0] * s[1] for m in model.modules() if id(m) not in in_layers and (s := _linear_shape(m)))
    return {
        "params": _num_params(model),
        "layer_params": sum(c["params"] for c in per_layer),
        "flops": sum(c["flops"] for c in per_layer) + other,
        "seq_len": seq_len,
        "per_layer": per_layer,
    }


def base_model_on_meta(model_or_config) -> nn.Module:
    """The model *before* pruning, rebuilt on the meta device from the `hfprune` record (no memory, no weights).

    Used by `hfprune info` to compare a saved pruned model with the dense one it came from.
    """
    from .export import model_class_for
    from .structure import get_record

    config = copy.deepcopy(getattr(model_or_config, "config", model_or_config))
    cls = type(model_or_config) if isinstance(model_or_config, nn.Module) else model_class_for(config)
    record = get_record(config)
    if record is None:
        raise ValueError("the model has no hfprune record, so there is no 'before' structure to rebuild")
    adapter = get_adapter(config)
    base = record["base"]
    config.num_hidden_layers = base["num_layers"]
    if adapter.config_heads_key:
        setattr(config, adapter.config_heads_key, base["heads"][0])
    if adapter.config_kv_heads_key:
        setattr(config, adapter.config_kv_heads_key, base["kv_heads"][0])
    if adapter.config_ffn_key:
        setattr(config, adapter.config_ffn_key, base["ffn"][0])
    delattr(config, "hfprune")
    with torch.device("meta"):
        return cls(config)


def pruned_model_on_meta(config) -> nn.Module:
    """The pruned model described by a saved `config.json` (with its hfprune record), on the meta device."""
    from .export import model_class_for
    from .structure import get_record
    from .surgery.core import apply_structure

    record = get_record(config)
    if record is None:
        raise ValueError("config.json has no hfprune record (not saved after hfprune.prune)")
    with torch.device("meta"):
        model = model_class_for(config)(copy.deepcopy(config))
        apply_structure(model, record)
    return model


@torch.inference_mode()
def measure_latency(model: nn.Module, inputs: dict, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall time in seconds of one forward pass of `model` on `inputs`, on the CPU, in eval mode.

    Args:
        model (`nn.Module`): the model (moved to the CPU for the measurement and kept there).
        inputs (`dict`): a tokenized batch.
        repeats (`int`, defaults to 5): timed passes; the median is returned (robust to a noisy, shared machine).
        warmup (`int`, defaults to 1): untimed passes first (allocator and kernel selection).
    """
    was_training = model.training
    model.eval()
    model.to("cpu")
    batch = {k: v.to("cpu") for k, v in inputs.items() if k != "labels"}
    try:
        for _ in range(warmup):
            model(**batch)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(**batch)
            times.append(time.perf_counter() - t0)
    finally:
        model.train(was_training)
    return statistics.median(times)
