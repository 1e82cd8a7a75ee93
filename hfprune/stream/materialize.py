"""A model on the meta device, and one part of it at a time made real (materialized) and freed again.

`build_meta_model(config)` builds the model class of `config.architectures` with every parameter on the meta device
(no memory, no random init) and the buffers real (rotary frequencies and other values computed from the config,
which a checkpoint does not hold). `materialize(slots, tensors, ...)` puts a part's tensors in place on `device` in
the compute dtype; `free(slots)` turns its parameters back into meta tensors of the same shape, so the memory goes
back and the model keeps its structure (a pruned block keeps its new shapes).

A *slot* is one place a tensor lives: `(name, module, attribute, is_parameter)`; tied parameters (an input embedding
shared with the output head) are one tensor in two slots, and stay one tensor through `materialize` and `free`.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from accelerate import init_empty_weights
from torch import nn

from ..io.rebuild import model_class_for
from ..structure import apply_structure, get_record


class Slot(NamedTuple):
    """One place a parameter or buffer lives in a model: `module.<attribute>`, known as `name` in the model."""

    name: str
    module: nn.Module
    attribute: str
    is_parameter: bool

    def get(self) -> torch.Tensor:
        table = self.module._parameters if self.is_parameter else self.module._buffers
        return table[self.attribute]

    def set(self, value: torch.Tensor) -> None:
        table = self.module._parameters if self.is_parameter else self.module._buffers
        table[self.attribute] = value


def build_meta_model(config) -> nn.Module:
    """The model class named by `config.architectures`, its parameters on the meta device, its buffers real, in eval
    mode (no memory is taken by the weights and none is randomly initialized). A config that carries hfprune's
    structure record (a model pruned to per-layer shapes) gives those shapes, as `load_pruned` does.

    Raises:
        ValueError: `config.architectures` names no transformers class.
    """
    from transformers.initialization import no_init_weights

    with init_empty_weights(include_buffers=False), no_init_weights():
        model = model_class_for(config)(config)
    record = get_record(config)
    if record is not None:
        apply_structure(model, record)  # slicing meta tensors: shapes only
    if hasattr(model, "tie_weights"):
        model.tie_weights()  # a tied head saved once is then one parameter with the embedding, as after loading
    return model.eval()


def part_slots(model: nn.Module, inside: str | None = None, outside: str | None = None) -> list[Slot]:
    """Every parameter and buffer slot of `model` under the module path `inside` (all: `None`), leaving out those
    under `outside` (tied parameters appear once per name)."""
    slots = []
    for module_name, module in model.named_modules(remove_duplicate=False):
        for table, is_parameter in ((module._parameters, True), (module._buffers, False)):
            for attribute, tensor in table.items():
                if tensor is None:
                    continue
                name = f"{module_name}.{attribute}" if module_name else attribute
                if _under(name, inside) and not (outside is not None and _under(name, outside)):
                    slots.append(Slot(name, module, attribute, is_parameter))
    return slots


def _under(name: str, path: str | None) -> bool:
    return path is None or path == "" or name.startswith(path + ".")


def materialize(slots: list[Slot], tensors: dict[str, torch.Tensor], device: torch.device | str,
                dtype: torch.dtype, where: str) -> None:
    """Put `tensors` (by model name) into `slots` on `device`, floating-point ones in `dtype`, as frozen parameters.

    A slot without a tensor takes its tied partner's (the same meta parameter in another slot), or, for a buffer that
    is already real (computed from the config), is moved to `device` in its own dtype. Everything is checked before
    anything changes.

    Args:
        where (`str`): what errors name as the tensors' origin (the checkpoint folder).

    Raises:
        ValueError: a tensor with no slot, a shape that is not the slot's, or a meta slot left without a tensor.
    """
    names = {slot.name for slot in slots}
    unknown = [name for name in tensors if name not in names]
    if unknown:
        raise ValueError(f"{where}: tensor {unknown[0]!r} has no place in this part of the model")
    for slot in slots:
        if slot.name in tensors and tuple(tensors[slot.name].shape) != tuple(slot.get().shape):
            raise ValueError(f"{where}: tensor {slot.name!r} has shape {tuple(tensors[slot.name].shape)}, the model "
                             f"built from the config expects {tuple(slot.get().shape)}")
    loaded = {id(slot.get()) for slot in slots if slot.name in tensors}
    missing = [slot.name for slot in slots
               if slot.name not in tensors and slot.get().is_meta and id(slot.get()) not in loaded]
    if missing:
        raise ValueError(f"{where}: no tensor for {missing[0]!r} (nor for a parameter tied to it)")
    new: dict[int, torch.Tensor] = {}
    for slot in sorted(slots, key=lambda s: s.name not in tensors):  # loaded slots first, then their tied partners
        old = slot.get()
        if id(old) not in new:
            if slot.name in tensors:
                source = tensors[slot.name]
                value = source.to(device=device, dtype=dtype if source.is_floating_point() else source.dtype)
            else:
                value = old.to(device=device)  # a buffer computed from the config keeps its dtype (rotary: fp32)
            new[id(old)] = nn.Parameter(value, requires_grad=False) if slot.is_parameter else value
        slot.set(new[id(old)])


def free(slots: list[Slot]) -> None:
    """Turn the parameters of `slots` back into meta tensors (same shape and dtype) and move buffers to the CPU."""
    new: dict[int, torch.Tensor] = {}
    for slot in slots:
        old = slot.get()
        if id(old) not in new:
            if slot.is_parameter:
                meta = torch.empty(old.shape, dtype=old.dtype, device="meta")
                new[id(old)] = nn.Parameter(meta, requires_grad=False)
            else:
                new[id(old)] = old.to("cpu")
        slot.set(new[id(old)])
