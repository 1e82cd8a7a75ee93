"""Parameter and FLOPs counts per layer, and measured CPU latency, of a (pruned) model.

FLOPs are counted by torch's own counter, `torch.utils.flop_counter.FlopCounterMode`, over one forward pass of a
copy of the model on the meta device, run under FakeTensorMode (no memory for weights, no arithmetic, the real model
untouched), so they
follow surgery exactly and every figure hfprune reports (`model_costs`, `hfprune info`, results.json, report.md,
benchmarks/speed_structured.py) comes from this one counter. What it counts: matrix products at 2 * m * n * k
(every linear projection: `2 * tokens * in * out`, biases not counted) and convolutions; the attention products
(q k^T and the weighted sum of v, `2 * 2 * seq_len**2 * heads * head_dim`) are counted too, for eager and SDPA
attention alike, since on the meta device SDPA runs its math form. Softmax, norms, activations and embedding
look-ups are not counted. The input is one sequence of `seq_len` tokens (vision models: one image of the config's
`image_size`); modules outside the blocks count what they compute on it (a pooler and classifier on one token, a
language-model head on all `seq_len`). A `seq_len` beyond the model's `max_position_embeddings` is counted at that
limit, the longest sequence the model takes, and `model_costs` reports the length it used as `seq_len`.
"""

from __future__ import annotations

import copy
import itertools
import statistics
import time

import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils.flop_counter import FlopCounterMode

from .arch import get_adapter, unwrap_model


def _num_params(module: nn.Module) -> int:
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def _meta_copy(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and buffers are meta tensors (the weights themselves are never copied)."""
    memo = {}
    for tensor in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = nn.Parameter(meta, tensor.requires_grad) if isinstance(tensor, nn.Parameter) else meta
    return copy.deepcopy(model, memo)


def _dummy_inputs(model: nn.Module, seq_len: int) -> dict:
    """One sequence of `seq_len` tokens (with its all-ones attention mask), or one image of the config's size."""
    config = model.config
    if getattr(model, "main_input_name", "input_ids") == "pixel_values":
        size = config.image_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.zeros(1, config.num_channels, *size, device="meta")}
    ids = torch.zeros(1, seq_len, dtype=torch.long, device="meta")
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def counted_length(model: nn.Module, seq_len: int) -> int:
    """`seq_len`, capped at the model's `max_position_embeddings` (longer inputs do not run)."""
    limit = getattr(unwrap_model(model).config, "max_position_embeddings", None)
    return min(seq_len, limit) if isinstance(limit, int) and limit > 0 else seq_len


def count_flops(model: nn.Module, seq_len: int = 128) -> tuple[int, list[int]]:
    """FLOPs of one forward pass over one sequence of `seq_len` tokens: the total, and the share of every block.

    Counted by `FlopCounterMode` on a meta-device copy of `model` (see the module docstring for what is counted).

    Returns:
        `tuple[int, list[int]]`: the whole forward, and per block in layer order.

    Example:
        ```python
        >>> total, per_layer = count_flops(model, seq_len=128)
        ```
    """
    model = unwrap_model(model)
    meta = _meta_copy(model)
    meta.eval()
    blocks = get_adapter(meta).layers(meta)
    try:
        return _counted_forward(meta, blocks, _dummy_inputs(meta, counted_length(model, seq_len)))
    except (RuntimeError, NotImplementedError) as err:
        raise RuntimeError(f"cannot count the FLOPs of {type(model).__name__} on the meta device: {err}") from err


def _counted_forward(model: nn.Module, blocks: list[nn.Module], inputs: dict) -> tuple[int, list[int]]:
    counter = FlopCounterMode(display=False)
    per_layer = [0] * len(blocks)

    def before(idx: int):
        return lambda module, args: per_layer.__setitem__(idx, per_layer[idx] - counter.get_total_flops())

    def after(idx: int):
        return lambda module, args, out: per_layer.__setitem__(idx, per_layer[idx] + counter.get_total_flops())

    # A block's share: the counter's running total after the block minus the total before it.
    handles = [block.register_forward_pre_hook(before(i)) for i, block in enumerate(blocks)]
    handles += [block.register_forward_hook(after(i)) for i, block in enumerate(blocks)]
    try:
        # Under FakeTensorMode, as under torch.compile: transformers skips its value checks (is the mask all ones,
        # is there padding?) for fake tensors, which plain meta tensors cannot answer (`.item()`).
        with FakeTensorMode(allow_non_fake_inputs=True), torch.no_grad(), counter:
            model(**inputs)
    finally:
        for handle in handles:
            handle.remove()
    return int(counter.get_total_flops()), per_layer


def layer_costs(model: nn.Module, seq_len: int = 128) -> list[dict]:
    """Per block: `heads`, `ffn`, `params` and `flops` (one sequence of `seq_len` tokens, see `count_flops`).

    Example:
        ```python
        >>> [c["flops"] for c in layer_costs(model, seq_len=128)]
        ```
    """
    return model_costs(model, seq_len)["per_layer"]


def model_costs(model: nn.Module, seq_len: int = 128) -> dict:
    """Whole-model counts: `params` (unique), `layer_params`, `flops` per sequence, and `per_layer` (see `layer_costs`).

    Example:
        ```python
        >>> costs = model_costs(model, seq_len=128)
        >>> costs["params"], costs["flops"]
        ```
    """
    model = unwrap_model(model)
    adapter = get_adapter(model)
    total, flops = count_flops(model, seq_len)
    per_layer = [{"heads": adapter.num_heads(model, block), "ffn": adapter.intermediate_size(block),
                  "params": _num_params(block), "flops": layer_flops}
                 for block, layer_flops in zip(adapter.layers(model), flops)]
    return {
        "params": _num_params(model),
        "layer_params": sum(c["params"] for c in per_layer),
        "flops": total,
        "seq_len": counted_length(model, seq_len),
        "per_layer": per_layer,
    }


def base_model_on_meta(model_or_config) -> nn.Module:
    """The model *before* pruning, rebuilt on the meta device from the `hfprune` record (no memory, no weights).

    Used by `hfprune info` to compare a saved pruned model with the dense one it came from.
    """
    from .io import model_class_for
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
    from .io import model_class_for
    from .structure import apply_structure, get_record

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
