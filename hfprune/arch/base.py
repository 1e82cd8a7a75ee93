"""The adapter contract every model family shares: which unit kinds it has, and how a rebuilt model is finished.

Only the modules in `hfprune.arch` know module names (`query`, `q_proj`, `c_attn`, `convolution`, ...). A family
adapter describes, as data, the coupled slices of each unit kind it supports (`unit_kinds`): a transformer adapter
(`hfprune.arch.transformer`) where its blocks, q/k/v/o projections and FFN are; a CNN adapter
(`hfprune.arch.channels`) its channel groups. The unit kinds (`hfprune.units`) read these descriptions to validate,
gate, remove and record units; nothing else in hfprune asks a model for a module by name.
"""

from __future__ import annotations

from torch import nn


def get_submodule(root: nn.Module, path: str) -> nn.Module:
    return root.get_submodule(path) if path else root


def set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    setattr(get_submodule(root, parent_path), name, module)


class ArchAdapter:
    """The part of a model family's description that does not depend on what its units are.

    Attributes:
        model_types (`tuple[str]`): `config.model_type` values served by this adapter.
        unit_kinds (`tuple[str]`): the unit kinds (`hfprune.units`) this family can lose, in the order their sizes
            appear in `hfprune.model_structure` (e.g. `("layers", "heads", "neurons")` or `("channels",)`).
        family (`str`): what the model is, for error messages ("a transformer", "a CNN").
    """

    model_types: tuple[str, ...] = ()
    unit_kinds: tuple[str, ...] = ()
    family: str = "a model"

    def __getattr__(self, name: str):
        # Reached only for a name this family does not define: a transformer path asked of a CNN, say.
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"{type(self).__name__} has no {name!r}: {'/'.join(self.model_types)} is {self.family} "
                             f"whose unit kinds are {', '.join(self.unit_kinds)}")

    def after_build(self, model: nn.Module, record: dict) -> None:
        """Hook for families whose modules derive values from the layer index at construction time."""

    def plain_stand_in(self, config, architectures: list[str]) -> tuple[dict | None, str]:
        """A stock family that runs this model's exact computation and whose config accepts shapes this one refuses.

        Args:
            architectures (`list[str]`): the model's class names (`config.architectures` is unset before a save).

        Returns:
            `(changes, reason)`: `changes` holds `model_type`, `architectures` and the config keys to drop / set
            (`drop`, `set`), or is `None` when there is no such family; `reason` says why, for logs and model cards.
        """
        return None, f"no stock family stands in for {config.model_type!r}"
