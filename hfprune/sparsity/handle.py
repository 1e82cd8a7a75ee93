"""`SparsityHandle`: keep-masks that stay applied while a model trains, until they are folded into the weights.

Masks are enforced without parametrizations and without a second copy of any weight: the gradient of a pruned weight
is zeroed by a tensor hook, and after every optimizer step that updates a masked weight, the mask is re-applied in
place (a global optimizer step post-hook). The second part is what keeps Adam from moving pruned weights back: its
moment estimates from before pruning would otherwise keep updating them. Memory cost: one bool per pruned weight.

The masks hold as long as the model lives, whether or not the caller keeps the handle: every active handle is kept
by its model (a registry keyed weakly by the model; the handle refers to the model weakly), so a bare
`hfprune.sparsify(model, 0.5)` keeps its zeros through training until `finalize()` / `remove()`.
`active_weight_masks(model)` lists them; structural pruning refuses while there are any.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Iterable

import torch
from torch import nn
from torch.optim.optimizer import register_optimizer_step_post_hook

from ..criteria import get_criterion
from ..weight_masks import active_handles, keep_handle, release_handle
from .config import SparsifyConfig
from .criteria import compute_scores
from .patterns import check_shapes, select_masks
from .targets import Target


def check_not_masked(model: nn.Module, targets: list[Target]) -> None:
    """Raise if an active handle already masks one of `targets` (use its `update()`, or `finalize()` it first)."""
    wanted = {id(t.weight) for t in targets}
    for handle in active_handles(model):
        overlap = [t.key for t in handle.targets if id(t.weight) in wanted]
        if overlap:
            raise ValueError(f"{overlap[0]} (and {len(overlap) - 1} more) is already masked by an active "
                             f"{handle!r}; call its update(sparsity) or finalize() before sparsify")


def compute_masks(model: nn.Module, targets: list[Target], config: SparsifyConfig, dataloader: Iterable | None = None,
                  prior: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks for `targets` under `config` (changes nothing in the model)."""
    pattern = config.parsed_pattern
    check_shapes(targets, pattern)
    scores = compute_scores(model, targets, config.criterion, dataloader, config.max_batches, config.seed,
                            config.criterion_options)
    return select_masks(targets, scores, float(config.sparsity), pattern, config.scope, prior)


class SparsityHandle:
    """Masks on a model's weights, kept applied during training. Returned by `hfprune.sparsify`.

    Attributes:
        model (`nn.Module`): the masked model.
        config (`SparsifyConfig`): the configuration of the current masks.
        targets (`list[Target]`): the masked modules.
        masks (`dict[str, torch.Tensor]`): module name -> bool keep-mask shaped like its weight (True = kept).
        info (`dict`): for calibration criteria (wanda, sparsegpt): `peak_memory`, `seconds`, `tokens`, ...

    Example:
        ```python
        >>> handle = hfprune.sparsify(model, 0.7)          # magnitude, layer-wise, attention + FFN projections
        >>> trainer.train()                               # pruned weights stay exactly zero
        >>> handle.finalize()                             # plain zeros; save with save_pretrained
        ```
    """

    def __init__(self, model: nn.Module, targets: list[Target], masks: dict[str, torch.Tensor],
                 config: SparsifyConfig, dataloader: Iterable | None = None,
                 originals: dict[str, torch.Tensor] | None = None, info: dict | None = None):
        self._model = weakref.ref(model)  # the model keeps the handle (see _ACTIVE), not the other way round
        self.config = config
        self.targets = list(targets)
        self.masks = masks
        # --- runtime state ---
        self._dataloader = dataloader  # reused by update() for the taylor criterion
        self._originals = originals  # weights before a calibration criterion changed them; remove() restores them
        self.info = dict(info or {})
        self._hooks: list = []
        self.active = False
        self._attach()
        self.apply()

    @property
    def model(self) -> nn.Module | None:
        """The masked model (`None` once it was garbage-collected)."""
        return self._model()

    # ----- enforcement -------------------------------------------------------------------------------------------
    def _attach(self) -> None:
        ref = weakref.ref(self)  # hooks must not keep a dropped handle (and its model) alive

        def after_step(optimizer, args, kwargs):
            handle = ref()
            if handle is not None and handle.active:
                handle._reapply_for(optimizer)

        for target in self.targets:
            def grad_hook(grad, name=target.name):
                handle = ref()
                if handle is None or not handle.active:
                    return None
                return grad.masked_fill(~handle._mask(name, grad.device), 0)

            if target.weight.requires_grad:  # a frozen weight gets no gradient; the step hook still holds it
                self._hooks.append(target.weight.register_hook(grad_hook))
        step_hook = register_optimizer_step_post_hook(after_step)
        self._hooks.append(step_hook)
        weakref.finalize(self, step_hook.remove)  # a handle dropped without remove() leaves no global hook behind
        self.active = True
        keep_handle(self.model, self)

    def _mask(self, name: str, device: torch.device) -> torch.Tensor:
        mask = self.masks[name]
        if mask.device != device:  # the model moved (e.g. .to("cuda")) after sparsify
            mask = self.masks[name] = mask.to(device)
        return mask

    def _reapply_for(self, optimizer) -> None:
        updated = {id(p) for group in optimizer.param_groups for p in group["params"]}
        with torch.no_grad():
            for target in self.targets:
                weight = target.weight
                if id(weight) in updated:
                    weight.masked_fill_(~self._mask(target.name, weight.device), 0)

    def apply(self) -> None:
        """Zero every pruned weight in place (e.g. after loading other weights into the model)."""
        with torch.no_grad():
            for target in self.targets:
                target.weight.masked_fill_(~self._mask(target.name, target.weight.device), 0)

    # ----- changing the masks ------------------------------------------------------------------------------------
    def update(self, sparsity: float, dataloader: Iterable | None = None, keep_pruned: bool = True) -> None:
        """Recompute the masks at a new sparsity with the same criterion, pattern, scope and targets.

        Args:
            sparsity (`float`): the new fraction of pruned weights, in [0, 1).
            dataloader (`Iterable[dict]`, *optional*): batches for the taylor criterion (default: the one given to
                `sparsify`).
            keep_pruned (`bool`, defaults to `True`): weights pruned so far stay pruned (gradual pruning).
        """
        if not self.active:
            raise RuntimeError("this SparsityHandle was finalized or removed; call hfprune.sparsify again")
        if get_criterion(self.config.criterion, "weights").sequential:
            raise ValueError(f"update() cannot recompute criterion {self.config.criterion!r} (its masks come from a "
                             "block-by-block calibration pass); call remove() and sparsify again")
        config = dataclasses.replace(self.config, sparsity=sparsity)
        dataloader = dataloader if dataloader is not None else self._dataloader
        self.masks = compute_masks(self.model, self.targets, config, dataloader, self.masks if keep_pruned else None)
        self.config = config
        self.apply()

    # ----- reading -----------------------------------------------------------------------------------------------
    def tensor_sparsity(self) -> dict[str, float]:
        """State-dict key -> measured fraction of exactly-zero weights."""
        return {t.key: float((t.weight == 0).sum()) / t.weight.numel() for t in self.targets}

    def sparsity(self) -> float:
        """Measured fraction of exactly-zero weights over all targets together."""
        zeros = sum(int((t.weight == 0).sum()) for t in self.targets)
        return zeros / max(1, sum(t.weight.numel() for t in self.targets))

    def mask_sparsity(self) -> float:
        """Fraction of pruned entries in the masks (cheaper than `sparsity()`; equal unless kept weights are 0)."""
        pruned = sum(int((~m).sum()) for m in self.masks.values())
        return pruned / max(1, sum(m.numel() for m in self.masks.values()))

    def keys(self) -> list[str]:
        """State-dict keys of the masked weights."""
        return [t.key for t in self.targets]

    # ----- ending ------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Stop enforcing the masks. Weights keep their current values, except after a calibration criterion
        (wanda, sparsegpt) with `keep_original=True`: then the original weights are restored, bit for bit."""
        if self._originals is not None:
            with torch.no_grad():
                for target in self.targets:
                    original = self._originals.get(target.name)
                    if original is not None:
                        target.weight.copy_(original.to(target.weight.device))
            self._originals = None
        self._detach()

    def _detach(self) -> None:
        for hook in self._hooks:
            hook.remove()
        self._hooks.clear()
        self.active = False
        release_handle(self.model, self)

    def finalize(self) -> nn.Module:
        """Fold the masks into the weights (plain zeros), detach every hook and return the model.

        The model then saves and loads with plain `save_pretrained` / `from_pretrained`.
        """
        if self.active:
            self.apply()
        self._originals = None  # the new weights (SparseGPT's reconstruction) are kept
        self._detach()
        return self.model

    def __repr__(self) -> str:
        state = "active" if self.active else "finalized"
        return (f"SparsityHandle({len(self.targets)} tensors, sparsity={self.config.sparsity:g}, "
                f"criterion={self.config.criterion!r}, pattern={self.config.pattern!r}, scope={self.config.scope!r}, "
                f"{state})")
