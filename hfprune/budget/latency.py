"""A per-layer latency table: one block timed with every number of heads and a grid of FFN widths, on the model's
current device, as in Kwon et al. (2022), Section 5 (latency-aware search with a lookup table).

The block's time is modelled as additive, T(h, n) = T(h, N) + T(H, n) - T(H, N), and the search uses the slopes of
least-squares lines through the two rows (seconds per head, per neuron); achieved latency is read from the table.
The whole model's dense latency (embeddings and head included) is measured on the same input, so the budget is a
fraction of the full forward time. Timings are averaged over processes under torch.distributed, so every process
plans with the same table.
"""

from __future__ import annotations

import copy
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from ..arch import get_adapter
from ..passes import all_reduce_sum, is_distributed
from .blocks import capture_block_inputs, run_block
from .costs import UnitCosts


@dataclass
class LatencyTable:
    """Timings in seconds of one block (the first layer's shape) and of the dense model.

    Attributes:
        heads (`list[float]`): index h-1 -> block time with h heads and the full FFN.
        neuron_counts (`list[int]`): FFN widths timed (increasing, the full width last).
        neurons (`list[float]`): block time with every head and `neuron_counts[i]` neurons.
        model (`float`): the whole dense model's forward time.
        batch_shape (`tuple[int, int]`): (batch, seq_len) of the timed input.
    """

    heads: list[float]
    neuron_counts: list[int]
    neurons: list[float]
    model: float
    batch_shape: tuple[int, int]

    def block(self, num_heads: int, num_neurons: int) -> float:
        """Estimated time of a block with these many heads and neurons."""
        full = self.heads[-1]
        return self.heads[num_heads - 1] + _interp(self.neuron_counts, self.neurons, num_neurons) - full

    def estimate(self, heads: list[int], neurons: list[int], dense_heads: list[int],
                 dense_neurons: list[int]) -> float:
        """Whole-model time with these per-layer counts (the dense model's measured time minus the table's gain)."""
        gain = sum(self.block(h0, n0) - self.block(h, n) for h, n, h0, n0 in zip(heads, neurons, dense_heads,
                                                                                 dense_neurons))
        return self.model - gain

    def unit_costs(self, num_layers: int) -> UnitCosts:
        head = _slope(list(range(1, len(self.heads) + 1)), self.heads)
        neuron = _slope(self.neuron_counts, self.neurons)
        return UnitCosts("latency", [head] * num_layers, [neuron] * num_layers, self.model)


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    if x <= xs[0]:
        return ys[0] if len(xs) == 1 else ys[0] + (x - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    for (x0, y0), (x1, y1) in zip(zip(xs, ys), zip(xs[1:], ys[1:])):
        if x <= x1:
            return y0 + (x - x0) * (y1 - y0) / (x1 - x0)
    return ys[-1]


def _slope(xs: list[int], ys: list[float]) -> float:
    """Least-squares slope, floored at a tiny positive value (a unit never costs nothing to the search)."""
    if len(xs) < 2:
        return 1e-12
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var
    return max(slope, 1e-12)


def _timed(fn, repeats: int) -> float:
    sync = torch.cuda.synchronize if torch.cuda.is_available() and torch.cuda.is_initialized() else (lambda: None)
    fn()  # warm-up: allocator, kernel choice
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def timing_batch(batch: dict, seq_len: int, batch_size: int = 8) -> dict:
    """A batch of `batch_size` sequences of exactly `seq_len` tokens, built by tiling a calibration batch."""
    ids = batch.get("input_ids")
    out = {}
    for key, value in batch.items():
        if key == "labels" or not isinstance(value, torch.Tensor):
            continue
        value = value[:batch_size]
        if ids is not None and value.dim() >= 2 and value.shape[1] == ids.shape[1]:
            reps = -(-seq_len // value.shape[1])
            value = value.repeat(1, reps, *([1] * (value.dim() - 2)))[:, :seq_len]
            if key == "attention_mask":
                value = torch.ones_like(value)
        out[key] = value
    return out


def build_latency_table(model: nn.Module, batch: dict, *, seq_len: int = 128, repeats: int = 5,
                        neuron_points: int = 12) -> LatencyTable:
    """Time the first block with 1..H heads and `neuron_points` FFN widths, and the whole model, on `batch`
    tiled to `seq_len` tokens (see `timing_batch`). The model is not changed (blocks are timed on copies)."""
    from ..units.heads import kv_layout, reshape_attention
    from ..units.neurons import reshape_ffn

    adapter = get_adapter(model)
    inputs = timing_batch(batch, seq_len)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            block_inputs = capture_block_inputs(model, [inputs])[0]
            block = adapter.layers(model)[0]
            num_heads, num_kv = adapter.num_heads(model, block), adapter.num_kv_heads(model, block)
            width = adapter.intermediate_size(block)
            heads = []
            for h in range(1, num_heads + 1):
                clone = copy.deepcopy(block)
                if h < num_heads:
                    keep = list(range(h))
                    kv = kv_layout(num_heads, num_kv, keep)[0] if adapter.supports_gqa else None
                    reshape_attention(model, adapter, clone, keep, kv)
                heads.append(_timed(lambda c=clone: run_block(c, block_inputs), repeats))
            counts = sorted({max(1, round(width * (i + 1) / neuron_points)) for i in range(neuron_points)})
            neurons = []
            for n in counts:
                clone = copy.deepcopy(block)
                if n < width:
                    reshape_ffn(adapter, clone, list(range(n)))
                neurons.append(_timed(lambda c=clone: run_block(c, block_inputs), repeats))
            extra = {k: v for k, v in inputs.items()}
            whole = _timed(lambda: model(**extra), repeats)
    finally:
        model.train(was_training)
    if is_distributed():
        world = torch.distributed.get_world_size()
        flat = all_reduce_sum([torch.tensor(heads + neurons + [whole], dtype=torch.float64)])[0] / world
        values = flat.tolist()
        heads, neurons, whole = values[:len(heads)], values[len(heads):-1], values[-1]
    ids = inputs.get("input_ids")
    shape = tuple(ids.shape) if ids is not None else (len(next(iter(inputs.values()))), seq_len)
    return LatencyTable(heads, counts, neurons, whole, shape)
