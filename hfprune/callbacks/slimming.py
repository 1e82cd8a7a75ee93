"""`NetworkSlimmingCallback`: the L1 penalty on BatchNorm scales that Network Slimming trains with.

Paper: Liu et al., 2017, "Learning Efficient Convolutional Networks through Network Slimming". Training adds
`l1 * sign(gamma)` (the subgradient of `l1 * |gamma|`) to every targeted BatchNorm weight's gradient after backward
and before the optimizer step, which drives unimportant channels' scales towards zero; afterwards
`channel_importance(criterion="bn_scale")` + `select_channels(scope="global")` removes them under one threshold.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import TrainerCallback

from .base import build_config, check_choice

logger = logging.getLogger("hfprune")


@dataclass
class NetworkSlimmingConfig:
    """What `NetworkSlimmingCallback` penalises, and how hard."""

    l1: float = field(default=1e-4, metadata={"help": "L1 penalty strength on |gamma| (Liu et al. use 1e-4..1e-5)."})
    targets: str = field(default="inner", metadata={
        "help": "'inner': the BatchNorms of free channel groups (a block's inner channels); 'all': every BatchNorm."})
    threshold: float = field(default=1e-2, metadata={"help": "|gamma| below this counts as 'small' in the logs."})

    def __post_init__(self):
        owner = "NetworkSlimmingCallback"
        for name in ("l1", "threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{owner}: {name} must be a number >= 0, got {value!r}")
        check_choice(owner, "targets", self.targets, ("inner", "all"))


def slimming_targets(model: nn.Module, targets: str) -> list[nn.BatchNorm2d]:
    """The BatchNorm layers the penalty applies to.

    Raises:
        ValueError: the model has no (affine) BatchNorm, or none in a free channel group for `targets="inner"`.
    """
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not norms:
        raise ValueError(f"NetworkSlimmingCallback: {type(model).__name__} has no BatchNorm layer with a scale "
                         "(gamma) to penalise; Network Slimming needs BatchNorm (ConvNeXt uses LayerNorm: prune it "
                         "with channel_importance(criterion='l1' / 'magnitude' / 'taylor') instead)")
    if targets == "all":
        return norms
    from ..arch.channels import channel_groups

    paths = {p for g in channel_groups(model).values() if g.prunable and not g.coupled for p in g.paths("norm")}
    inner = [model.get_submodule(p) for p in sorted(paths)]
    inner = [m for m in inner if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.weight is not None]
    if not inner:
        raise ValueError(f"NetworkSlimmingCallback: {type(model).__name__} has no BatchNorm over inner channels; "
                         "use targets='all'")
    return inner


class NetworkSlimmingCallback(TrainerCallback):
    """Train with Network Slimming's L1 penalty on BatchNorm scales (`l1 * sign(gamma)` added to their gradients).

    Runs in `on_pre_optimizer_step` (after backward and gradient clipping, before `optimizer.step()`), so it works
    with gradient accumulation and any optimizer. At every logging step it logs the fraction of targeted |gamma|
    below `threshold` (also kept in `.history` as `(global_step, fraction)`).

    Args:
        l1 (`float`, defaults to 1e-4): penalty strength.
        targets (`str`, defaults to `"inner"`): `"inner"` (BatchNorms of free channel groups) or `"all"`.
        threshold (`float`, defaults to 1e-2): what counts as a small |gamma| in the logs.

    Raises:
        ValueError: (at train begin, before any step) the model has no BatchNorm.

    Example:
        ```python
        >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[hfprune.NetworkSlimmingCallback(l1=1e-4)])
        >>> trainer.train()
        >>> plan = hfprune.select_channels(hfprune.channel_importance(model, criterion="bn_scale", groups="inner"),
        ...                                ratio=0.5, scope="global")
        ```
    """

    def __init__(self, **options):
        self.config = build_config(NetworkSlimmingConfig, "NetworkSlimmingCallback", options)
        # ----- runtime state (filled during training; not configuration) -----
        self.norms: list[nn.BatchNorm2d] = []  # the penalised BatchNorms of the model being trained
        self.history: list[tuple[int, float]] = []  # (global_step, fraction of |gamma| < threshold) per log

    def small_fraction(self) -> float:
        """The fraction of targeted |gamma| below `threshold` now."""
        gammas = torch.cat([m.weight.detach().abs().flatten().float().cpu() for m in self.norms])
        return float((gammas < self.config.threshold).float().mean())

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.norms = slimming_targets(model, self.config.targets)

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        if not self.config.l1:
            return
        with torch.no_grad():
            for norm in self.norms:
                if norm.weight.grad is not None:
                    norm.weight.grad.add_(torch.sign(norm.weight), alpha=self.config.l1)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.norms:
            fraction = self.small_fraction()
            self.history.append((state.global_step, fraction))
            logger.info("NetworkSlimmingCallback: step %d: %.1f%% of |gamma| < %g", state.global_step,
                        100 * fraction, self.config.threshold)
