"""The block walker: a model's blocks one at a time, each on the outputs of the blocks before it.

The batches run through the model once, up to the input of block 0, where a pre-hook stores the block's positional
and keyword inputs (hidden states, attention mask, rotary position embeddings, ...) and raises to stop the forward.
Then, one block at a time: the block moves to `device` (when given; the other blocks stay where they are, e.g. on
CPU), the caller's `visit` does its work on it (SparseGPT / Wanda: collect input statistics through hooks, then
change the block's weights), and the block runs again so that its outputs replace its inputs as the inputs of the
next block. So block l is visited on the outputs of the already changed blocks before it, and only one block (plus
one buffer of activations) has to be worked on at a time.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn

from ..arch import get_adapter
from .batches import iter_batches
from .forward import block_input, block_output
from .memory import MemoryMeter, release_free_heap


class StopForward(Exception):
    """Raised by a hook when nothing after it needs computing (block 0's inputs are captured; a stage's targets have
    all seen their input)."""


def _to(obj, device):
    """`obj` with every tensor inside (tuples, lists, dicts) moved to `device`."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


def names_per_block(model: nn.Module, names: Sequence[str]) -> list[list[int]]:
    """For each block of `model`, the positions in `names` of the module names inside it.

    Raises:
        ValueError: a name outside every block (its inputs are not produced block by block), naming it.
    """
    base = get_adapter(model).layers_path(model)
    count = len(model.get_submodule(base))
    per_block: list[list[int]] = [[] for _ in range(count)]
    for position, name in enumerate(names):
        prefix, _, rest = name.partition(f"{base}.")
        index = rest.split(".", 1)[0] if not prefix and rest else ""
        if not index.isdigit() or int(index) >= count:
            raise ValueError(f"{name} is not inside one of the model's blocks ({base}.N); block-by-block criteria "
                             "prune block by block, so every target must be a layer of a block")
        per_block[int(index)].append(position)
    return per_block


def capture_block_inputs(model: nn.Module, first_block: nn.Module, batches: Iterable,
                         device: torch.device | None = None) -> list[tuple[tuple, dict]]:
    """Run each batch up to `first_block` and return its inputs as a list of (args, kwargs), on `device` (`None`:
    where the model put them); one entry per batch, in order. Sequence lengths are checked against the model's
    positions; labels are dropped (no loss is computed)."""
    captured = []

    def grab(module, args, kwargs):
        captured.append((args, kwargs) if device is None else (_to(args, device), _to(kwargs, device)))
        raise StopForward

    extra = {"use_cache": False} if "use_cache" in inspect.signature(model.forward).parameters else {}
    handle = first_block.register_forward_pre_hook(grab, with_kwargs=True)
    model_device = next(model.parameters()).device
    try:
        with torch.no_grad():
            for batch in iter_batches(batches, model_device, show_progress=False, need_labels=False,
                                      positions_of=model):
                try:
                    model(**{k: v for k, v in batch.items() if k != "labels"}, **extra)
                except StopForward:
                    continue
                raise RuntimeError(f"the forward of {type(model).__name__} never reached its first block")
    finally:
        handle.remove()
    return captured


def with_hidden(args, kwargs, hidden):
    """A block's inputs with its hidden states replaced."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def run_block(block: nn.Module, args, kwargs) -> torch.Tensor:
    return block_output(block(*args, **kwargs))


def feed(block: nn.Module, modules: dict[str, nn.Module], inputs: list, add: Callable[[str, torch.Tensor], None],
         stop_early: bool = False) -> None:
    """Run `block` on every input, calling `add(name, x)` with the input `x` of each of `modules` (a forward hook).

    With `stop_early`, each forward stops once every module has seen its input (the rest of the block cannot change
    them; each projection runs once per block forward in the families hfprune supports).
    """
    pending: set[str] = set()

    def record(name, inp):
        add(name, inp[0].detach())
        pending.discard(name)
        if stop_early and not pending:
            raise StopForward

    hooks = [m.register_forward_hook(lambda mod, inp, out, name=name: record(name, inp))
             for name, m in modules.items()]
    try:
        for args, kwargs in inputs:
            pending.update(modules)
            try:
                run_block(block, args, kwargs)
            except StopForward:
                pass
    finally:
        for hook in hooks:
            hook.remove()


def walk_blocks(model: nn.Module, batches: Iterable, visit: Callable[[int, nn.Module, list], None],
                device: str | torch.device | None = None, finish: Callable[[], None] | None = None) -> dict:
    """Call `visit(index, block, inputs)` for every block in order, each on the outputs of the visited blocks before.

    Args:
        model (`nn.Module`): a model of a family hfprune supports (its adapter names the blocks).
        batches: batch dicts (`input_ids`, optionally `attention_mask`); lengths are checked against the positions.
        visit (`Callable`): the work on one block; `inputs` is the list of the block's (args, kwargs).
        device (`str` or `torch.device`, *optional*): each block is moved there while it is visited, then moved
            back; the activations live there. Default: where the model is.
        finish (`Callable`, *optional*): called last, inside the memory measurement (e.g. to unpack results).

    Returns:
        `dict`: `peak_memory`, `seconds`, `blocks`, `samples`, `tokens`, `device`, `activation_bytes` (one buffer
        of block inputs).
    """
    start = time.perf_counter()
    adapter = get_adapter(model)
    layers = model.get_submodule(adapter.layers_path(model))
    model_device = next(model.parameters()).device
    device = torch.device(device) if device is not None else model_device
    meter = MemoryMeter(device, model)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), meter:
            inputs = capture_block_inputs(model, layers[0], batches, device)
            hidden = [block_input(a, k) for a, k in inputs]
            tokens = sum(int(h.shape[:-1].numel()) for h in hidden)
            samples = sum(int(h.shape[0]) for h in hidden)
            activation_bytes = sum(h.numel() * h.element_size() for h in hidden)
            del hidden
            for index, block in enumerate(layers):
                home = next(block.parameters()).device
                block.to(device)
                visit(index, block, inputs)
                if index + 1 < len(layers):  # the visited block's outputs feed the next block
                    for i, (args, kwargs) in enumerate(inputs):
                        inputs[i] = with_hidden(args, kwargs, run_block(block, args, kwargs))
                block.to(home)
                if device.type == "cpu":  # hand the freed temporaries back, so the next block does not stack on them
                    release_free_heap()
            del inputs
            if device.type == "cpu":  # the activations' memory goes back before `finish` allocates
                release_free_heap()
            if finish is not None:
                finish()
    finally:
        model.train(was_training)
    return {"peak_memory": meter.results, "seconds": time.perf_counter() - start, "blocks": len(layers),
            "samples": samples, "tokens": tokens, "device": str(device), "activation_bytes": activation_bytes}
