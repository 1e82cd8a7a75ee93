"""Sequential, block-by-block calibration for weight pruning (the scheme of SparseGPT and llm-compressor).

The calibration batches run through the model once, up to the input of block 0, where a pre-hook stores the block's
positional and keyword inputs (hidden states, attention mask, rotary position embeddings, ...) and raises to stop
the forward. Then, one block at a time:

1. the block moves to `device` (when given; the other blocks stay where they are, e.g. on CPU);
2. forward hooks on its target Linear layers accumulate per-layer input statistics (a column norm for Wanda, the
   Hessian X X^T for SparseGPT) over every calibration sample;
3. the block's targets are pruned (and, for a solver, reconstructed) from those statistics, which are then dropped;
4. the block runs again, now pruned, and its outputs replace its inputs as the inputs of the next block.

So the pruning of block l sees the errors of the pruned blocks before it, and only one block's statistics (plus
one buffer of calibration activations) are in memory at a time.

With `true_sequential=True` (the `--true-sequential` of the GPTQ / SparseGPT reference code for LLaMA), steps 2-3
run once per stage of the block, in the order of its data flow (the family adapter's `calibration_stages()`, e.g.
q/k/v -> o -> gate/up -> down): each stage's statistics are collected with the earlier stages of the same block
already pruned, so e.g. `o_proj` is pruned for the context its pruned q/k/v produce. The forward of a stage stops
as soon as every target of the stage has seen its input, and only one stage's statistics are held at a time.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..arch import get_adapter
from ..calibration import iter_batches
from .targets import Target


class _StopForward(Exception):
    """Raised by the block-0 pre-hook: nothing after the first block's inputs needs computing."""


def _to(obj, device):
    """`obj` with every tensor inside (tuples, lists, dicts) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@dataclass
class MemoryMeter:
    """Peak memory while calibrating: CUDA's allocator peak on a GPU, the process's peak RSS on CPU.

    On CPU, torch allocates tensors outside Python's allocator (so `tracemalloc` does not see them); the kernel's
    high-water mark of resident memory (`VmHWM`, reset through `/proc/self/clear_refs`) does. `extra_bytes` is the
    peak minus the resident memory when calibration started (the model, paged in first, and everything already
    loaded); free heap memory is returned to the OS first (`malloc_trim`), so reusing it counts.
    """

    device: torch.device
    model: nn.Module | None = None
    start_bytes: int = 0
    exact: bool = True
    results: dict = field(default_factory=dict)

    def __enter__(self):
        if self.model is not None and self.device.type != "cuda":
            _page_in(self.model)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start_bytes = torch.cuda.memory_allocated(self.device)
        else:
            _release_free_heap()
            try:  # "5" resets the peak RSS to the current RSS (Linux >= 4.0)
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")
            except OSError:
                self.exact = False  # then the peak since the process started is all there is
            self.start_bytes = _proc_status("VmRSS")
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            peak = _proc_status("VmHWM")
        self.results.update(device=str(self.device), start_bytes=self.start_bytes, peak_bytes=peak,
                            extra_bytes=max(0, peak - self.start_bytes), exact=self.exact)
        return False


def _page_in(model: nn.Module) -> None:
    """Read one value per memory page of every CPU parameter: weights that from_pretrained left memory-mapped would
    otherwise become resident during calibration and count as memory the pass allocated."""
    with torch.no_grad():
        for p in model.parameters():
            if p.device.type == "cpu" and p.numel():
                p.detach().reshape(-1)[:: max(1, 4096 // p.element_size())].sum()


def _release_free_heap() -> None:
    """Return glibc's free heap pages to the OS, so memory freed before calibration and reused by it counts as new
    resident memory (otherwise the peak RSS misses it and the measured extra is too low)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the measurement is a lower bound then
        pass


def _proc_status(key: str) -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # not Linux: the peak since the process started

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if os.uname().sysname == "Darwin" else 1024)


def block_targets(model: nn.Module, targets: list[Target]) -> tuple[nn.ModuleList, list[list[Target]]]:
    """The model's blocks and, per block, the targets inside it.

    Raises:
        ValueError: a target outside every block (its inputs are not produced block by block), naming it.
    """
    adapter = get_adapter(model)
    base = adapter.layers_path(model)
    layers = model.get_submodule(base)
    per_block: list[list[Target]] = [[] for _ in layers]
    for target in targets:
        prefix, _, rest = target.name.partition(f"{base}.")
        index = rest.split(".", 1)[0] if not prefix and rest else ""
        if not index.isdigit() or int(index) >= len(layers):
            raise ValueError(f"{target.name} is not inside one of the model's blocks ({base}.N); calibration-based "
                             "criteria prune block by block, so every target must be a layer of a block")
        per_block[int(index)].append(target)
    return layers, per_block


def capture_block_inputs(model: nn.Module, first_block: nn.Module, batches: Iterable, device: torch.device | None):
    """Run each batch up to `first_block` and return its inputs as a list of (args, kwargs), on `device`."""
    captured = []

    def grab(module, args, kwargs):
        captured.append((_to(args, device), _to(kwargs, device)))
        raise _StopForward

    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    model_device = next(model.parameters()).device
    try:
        for batch in iter_batches(batches, model):
            inputs = {k: v for k, v in batch.items() if k != "labels"}  # no loss needed; the forward stops early
            try:
                model(**_to(inputs, model_device), use_cache=False)
            except _StopForward:
                continue
            raise RuntimeError(f"the forward of {type(model).__name__} never reached its first block")
    finally:
        handle.remove()
    if not captured:
        raise ValueError("the calibration dataloader yielded no batches")
    return captured


def _hidden(args, kwargs):
    return args[0] if args else kwargs["hidden_states"]


def _with_hidden(args, kwargs, hidden):
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def _run_block(block, args, kwargs):
    out = block(*args, **kwargs)
    return out[0] if isinstance(out, (tuple, list)) else out


# solve(target, weight (out, in) float32, statistic) -> (keep mask (out, in), new weight (out, in) or None)
Solver = Callable[[Target, torch.Tensor, object], tuple[torch.Tensor, torch.Tensor | None]]


@dataclass
class CalibrationResult:
    """What a calibration-based weight criterion returns (see `hfprune.criteria.wanda` / `sparsegpt`).

    Attributes:
        masks (`dict[str, torch.Tensor]`): module name -> bool keep-mask shaped like its weight (True = kept).
        originals (`dict[str, torch.Tensor]` or `None`): CPU copies of the weights before pruning (`remove()` of the
            handle restores them), or `None` when not kept.
        info (`dict`): `peak_memory`, `seconds`, `blocks`, `samples`, `tokens`, `device`.
    """

    masks: dict
    originals: dict | None
    info: dict


def run_sequential(model: nn.Module, targets: list[Target], batches: Iterable, make_stat: Callable[[Target], object],
                   solve: Solver, device: str | torch.device | None = None,
                   originals: dict[str, torch.Tensor] | None = None,
                   true_sequential: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Prune `targets` block by block with calibration statistics; the weights change in place.

    Args:
        model (`nn.Module`): a model of a family hfprune supports (its adapter names the blocks).
        targets (`list[Target]`): Linear / Conv1D layers inside the blocks.
        batches: calibration batch dicts (`input_ids`, optionally `attention_mask`).
        make_stat (`Callable`): a fresh accumulator per target, with `.add(x)` for every input batch `x` of the
            layer (shape `(..., in_features)`).
        solve (`Solver`): the keep-mask and (for solvers) the new weight of one target from its statistic.
        device (`str` or `torch.device`, *optional*): each block is moved there while it is processed, then moved
            back; the calibration activations live there. Default: where the model is.
        originals (`dict`, *optional*): filled with a CPU copy of every target's weight before it changes.
        true_sequential (`bool`, defaults to `False`): calibrate each block in stages (see the module docstring);
            a family whose adapter has no stages is calibrated in one stage.

    Returns:
        `(masks, info)`: module name -> bool keep-mask shaped like its weight (on CPU); and a dict with
        `peak_memory`, `seconds`, `blocks`, `samples`, `tokens`, `activation_bytes` (one buffer of block inputs),
        `mask_bytes` (the bool masks, one byte per targeted weight, held on CPU) and `stages` (the most stages
        of one block: 1 unless `true_sequential`).
    """
    start = time.perf_counter()
    layers, per_block = block_targets(model, targets)
    adapter = get_adapter(model)
    stage_paths = adapter.calibration_stages() if true_sequential else ()
    base = adapter.layers_path(model)
    staged = [split_stages(block, f"{base}.{i}.", stage_paths) for i, block in enumerate(per_block)]
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    masks: dict[str, torch.Tensor] = {}
    meter = MemoryMeter(device, model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), meter:
            inputs = capture_block_inputs(model, layers[0], batches, device)
            tokens = sum(int(_hidden(a, k).shape[:-1].numel()) for a, k in inputs)
            samples = sum(int(_hidden(a, k).shape[0]) for a, k in inputs)
            activation_bytes = sum(_hidden(a, k).numel() * _hidden(a, k).element_size() for a, k in inputs)
            for index, block in enumerate(layers):
                home = next(block.parameters()).device
                block.to(device)
                for stage in staged[index]:
                    _prune_stage(block, stage, inputs, make_stat, solve, masks, originals, stop_early=true_sequential)
                if index + 1 < len(layers):  # the pruned block's outputs feed the next block
                    for i, (args, kwargs) in enumerate(inputs):
                        inputs[i] = _with_hidden(args, kwargs, _run_block(block, args, kwargs))
                block.to(home)
                if device.type == "cpu":  # hand the freed temporaries back, so the next block does not stack on them
                    _release_free_heap()
            del inputs
            if device.type == "cpu":  # the activations' memory goes back before the bool masks are allocated
                _release_free_heap()
            for name in list(masks):  # unpacked one by one, inside the meter: the handle holds bool masks
                masks[name] = _unpack(masks[name])
    finally:
        model.train(was_training)
    info = {"peak_memory": meter.results, "seconds": time.perf_counter() - start, "blocks": len(layers),
            "samples": samples, "tokens": tokens, "device": str(device),
            "activation_bytes": activation_bytes, "mask_bytes": sum(m.numel() for m in masks.values()),
            "stages": max(len(s) for s in staged)}
    return masks, info


def _pack(mask: torch.Tensor) -> tuple[np.ndarray, torch.Size]:
    """A bool mask as bits (1/8 of its bytes) on CPU: the pass holds the masks of every block done so far."""
    return np.packbits(mask.detach().cpu().numpy(), axis=None), mask.shape


def _unpack(packed: tuple[np.ndarray, torch.Size]) -> torch.Tensor:
    bits, shape = packed
    return torch.from_numpy(np.unpackbits(bits, count=shape.numel())).view(torch.bool).reshape(shape)


def split_stages(targets: list[Target], prefix: str, stage_paths: tuple[tuple[str, ...], ...]) -> list[list[Target]]:
    """The targets of one block (names under `prefix`) in calibration stages; `()` gives one stage.

    A target no stage names joins the first stage: its statistics are then those of the one-stage scheme, which is
    valid wherever it sits in the block (later stages are collected after it is pruned, as after any earlier one).
    """
    if not stage_paths:
        return [targets] if targets else []
    where = {path: i for i, paths in enumerate(stage_paths) for path in paths}
    stages: list[list[Target]] = [[] for _ in stage_paths]
    for target in targets:
        stages[where.get(target.name[len(prefix):], 0)].append(target)
    return [stage for stage in stages if stage]


def _prune_stage(block, targets, inputs, make_stat, solve, masks, originals, stop_early: bool = False) -> None:
    """Collect the statistics of `targets` over `inputs` through forward hooks, then prune each target.

    With `stop_early`, each forward stops once every target has seen its input (the rest of the block cannot
    change them; each projection runs once per block forward in the families hfprune supports): true-sequential
    stages would otherwise run the whole block once per stage.
    """
    if not targets:
        return
    stats = {t.name: make_stat(t) for t in targets}
    pending: set[str] = set()

    def record(name, inp):
        stats[name].add(inp[0].detach())
        pending.discard(name)
        if stop_early and not pending:
            raise _StopForward

    hooks = [t.module.register_forward_hook(lambda m, inp, out, name=t.name: record(name, inp)) for t in targets]
    try:
        for args, kwargs in inputs:
            pending.update(stats)
            try:
                _run_block(block, args, kwargs)
            except _StopForward:
                pass
    finally:
        for hook in hooks:
            hook.remove()
    for target in targets:
        weight = target.weight
        canonical = target.canonical(weight.detach()).float().contiguous()
        keep, new_weight = solve(target, canonical, stats.pop(target.name))
        if originals is not None:
            originals[target.name] = weight.detach().to("cpu", copy=True)
        values = (new_weight if new_weight is not None else canonical).masked_fill(~keep, 0)
        weight.data.copy_(target.from_canonical(values.to(weight.dtype)))
        masks[target.name] = _pack(target.from_canonical(keep))
