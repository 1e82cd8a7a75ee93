"""Block-by-block weight pruning from calibration statistics: what Wanda and SparseGPT share (the scheme of SparseGPT
and llm-compressor), on the block walker of `hfprune.passes.blocks`.

For each block: forward hooks on its target Linear layers accumulate per-layer input statistics (a column norm for
Wanda, the Hessian X X^T for SparseGPT) over every calibration sample; the block's targets are pruned (and, for a
solver, reconstructed) from those statistics, which are then dropped; the walker then runs the pruned block so that
the next block is measured on the outputs of the pruned blocks before it. Only one block's statistics (plus one
buffer of calibration activations) are in memory at a time.

With `true_sequential=True` (the `--true-sequential` of the GPTQ / SparseGPT reference code for LLaMA), the
statistics are collected and the targets pruned once per stage of the block, in the order of its data flow (the
family adapter's `calibration_stages()`, e.g. q/k/v -> o -> gate/up -> down): each stage's statistics are
collected with the earlier stages of the same block already pruned, so e.g. `o_proj` is pruned for the context its
pruned q/k/v produce. The forward of a stage stops as soon as every target of the stage has seen its input, and
only one stage's statistics are held at a time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from ..arch import get_adapter
from ..passes.blocks import feed, names_per_block, walk_blocks
from . import Option

if TYPE_CHECKING:
    from ..sparsity.targets import Target

# The option both block-by-block criteria read (their defaults differ: see each criterion).
TRUE_SEQUENTIAL = Option(lambda v: isinstance(v, bool), "True or False")

# walk(visit, finish) -> info: calls visit(index, block, inputs) for every block in order, then finish()
Walk = Callable[[Callable[[int, nn.Module, list], None], Callable[[], None]], dict]

# solve(target, weight (out, in) float32, statistic) -> (keep mask (out, in), new weight (out, in) or None)
Solver = Callable[["Target", torch.Tensor, object], tuple[torch.Tensor, "torch.Tensor | None"]]


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


def _pack(mask: torch.Tensor) -> tuple[np.ndarray, torch.Size]:
    """A bool mask as bits (1/8 of its bytes) on CPU: the pass holds the masks of every block done so far."""
    return np.packbits(mask.detach().cpu().numpy(), axis=None), mask.shape


def _unpack(packed: tuple[np.ndarray, torch.Size]) -> torch.Tensor:
    bits, shape = packed
    return torch.from_numpy(np.unpackbits(bits, count=shape.numel())).view(torch.bool).reshape(shape)


def _prune_stage(block, targets, inputs, make_stat, solve, masks, originals, stop_early: bool = False) -> None:
    """Collect the statistics of `targets` over `inputs` through forward hooks, then prune each target."""
    if not targets:
        return
    stats = {t.name: make_stat(t) for t in targets}
    feed(block, {t.name: t.module for t in targets}, inputs, lambda name, x: stats[name].add(x), stop_early)
    for target in targets:
        weight = target.weight
        canonical = target.canonical(weight.detach()).float().contiguous()
        keep, new_weight = solve(target, canonical, stats.pop(target.name))
        if originals is not None:
            originals[target.name] = weight.detach().to("cpu", copy=True)
        # In place: `canonical` may share the weight's memory, which is overwritten with these values just below.
        values = (new_weight if new_weight is not None else canonical).masked_fill_(~keep, 0)
        weight.data.copy_(target.from_canonical(values.to(weight.dtype)))
        if masks is not None:
            masks[target.name] = _pack(target.from_canonical(keep))


def block_targets(model: nn.Module, targets: list[Target]) -> list[list[Target]]:
    """Per block of `model`, the targets inside it (raises naming a target outside every block)."""
    return [[targets[i] for i in block] for block in names_per_block(model, [t.name for t in targets])]


def prune_blocks(model: nn.Module, targets: list[Target], batches: Iterable, make_stat: Callable[[Target], object],
                 solve: Solver, device: str | torch.device | None = None,
                 originals: dict[str, torch.Tensor] | None = None,
                 true_sequential: bool = False, walk: Walk | None = None) -> tuple[dict[str, torch.Tensor], dict]:
    """Prune `targets` block by block with calibration statistics; the weights change in place.

    Args:
        model (`nn.Module`): a model of a family hfprune supports (its adapter names the blocks).
        targets (`list[Target]`): Linear / Conv1D layers inside the blocks.
        batches: calibration batch dicts (`input_ids`, optionally `attention_mask`).
        make_stat (`Callable`): a fresh accumulator per target, with `.add(x)` for every input batch `x` of the
            layer (shape `(..., in_features)`).
        solve (`Solver`): the keep-mask and (for solvers) the new weight of one target from its statistic.
        device (`str` or `torch.device`, *optional*): each block is moved there while it is processed.
        originals (`dict`, *optional*): filled with a CPU copy of every target's weight before it changes.
        true_sequential (`bool`, defaults to `False`): calibrate each block in stages (see the module docstring);
            a family whose adapter has no stages is calibrated in one stage.
        walk (`Walk`, *optional*): who brings the blocks and their inputs: `walk(visit, finish)` calls
            `visit(index, block, inputs)` for every block in order, then `finish()`, and returns the run's info
            (`hfprune.stream`: blocks materialized from a checkpoint and written out one at a time). Default: the
            loaded model's blocks (`passes.blocks.walk_blocks` with `batches` and `device`). A given walk keeps no
            masks (the blocks it writes out hold the zeros): `masks` is then empty.

    Returns:
        `(masks, info)`: module name -> bool keep-mask shaped like its weight (on CPU); and the walker's info plus
        `mask_bytes` (the bool masks, one byte per targeted weight, held on CPU) and `stages` (the most stages of
        one block: 1 unless `true_sequential`).
    """
    per_block = block_targets(model, targets)
    adapter = get_adapter(model)
    stage_paths = adapter.calibration_stages() if true_sequential else ()
    base = adapter.layers_path(model)
    staged = [split_stages(block, f"{base}.{i}.", stage_paths) for i, block in enumerate(per_block)]
    masks: dict[str, torch.Tensor] = {}
    kept = masks if walk is None else None

    def visit(index: int, block: nn.Module, inputs: list) -> None:
        for stage in staged[index]:
            _prune_stage(block, stage, inputs, make_stat, solve, kept, originals, stop_early=true_sequential)

    def finish() -> None:
        for name in list(masks):  # unpacked one by one, inside the meter: the handle holds bool masks
            masks[name] = _unpack(masks[name])

    if walk is None:
        info = walk_blocks(model, batches, visit, device=device, finish=finish)
    else:
        info = walk(visit, finish)
    info.update(mask_bytes=sum(m.numel() for m in masks.values()), stages=max((len(s) for s in staged), default=0))
    return masks, info
