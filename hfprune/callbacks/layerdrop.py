"""`LayerDropCallback`: structured dropout of whole layers during training (Fan et al., 2020).

Fan et al. (2020), "Reducing Transformer Depth on Demand with Structured Dropout" (ICLR 2020): skipping random
layers while training makes the model robust to removing layers afterwards, e.g. every other layer. Skipping uses
hfprune's layer gates (a skipped block passes the residual stream through unchanged); the block still runs, so
LayerDrop here regularises but does not speed training up. Gates are re-drawn at each optimizer step and reset to
1 at its end, so evaluation and prediction always see the full model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import TrainerCallback

from ..masking import attach_gates
from .base import build_config, check_choice


@dataclass
class LayerDropConfig:
    p: float = field(default=0.2, metadata={"help": "Probability that a candidate layer is skipped at a step."})
    mode: str = field(default="uniform", metadata={
        "help": "'uniform': every layer is a candidate; 'every_other': only odd layers (1, 3, ...), the ones "
                "removed by every-other-layer pruning."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the drop pattern (default: args.seed)."})

    def __post_init__(self):
        if isinstance(self.p, bool) or not isinstance(self.p, (int, float)) or not 0.0 <= self.p < 1.0:
            raise ValueError(f"LayerDropCallback: p must be in [0, 1), got {self.p!r}")
        check_choice("LayerDropCallback", "mode", self.mode, ("uniform", "every_other"))


class LayerDropCallback(TrainerCallback):
    """Skip each candidate layer with probability `p` at every training step (never in evaluation).

    Each candidate layer is dropped independently. The pattern depends only on the seed and the step, so every
    process of a distributed run drops the same layers (DDP still needs `ddp_find_unused_parameters=True`, since a
    skipped block's parameters get no gradient).

    Args:
        p (`float`, defaults to 0.2): drop probability, in [0, 1).
        mode (`str`, defaults to `"uniform"`): "uniform" or "every_other".
        seed (`int`, *optional*): seed of the pattern; defaults to `args.seed`.

    Example:
        ```python
        >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[hfprune.LayerDropCallback(p=0.5,
        ...                                                                 mode="every_other")])
        >>> trainer.train()
        >>> hfprune.prune(model, hfprune.PruningPlan(layers=[1, 3, 5]))   # half the depth, little loss
        ```
    """

    def __init__(self, **options):
        self.config = build_config(LayerDropConfig, "LayerDropCallback", options)
        # ----- runtime state (filled during training; not configuration) -----
        self.dropped: list[int] = []  # layers skipped at the current step
        self._gates = None
        self._generator: torch.Generator | None = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        # A run that raised mid-step (no on_train_end) left its gates on, some at 0: take them off before re-attaching,
        # or those layers would stay skipped for good.
        self.on_train_end(args, state, control)
        self._gates = attach_gates(model, layers=True)
        seed = self.config.seed if self.config.seed is not None else args.seed
        self._generator = torch.Generator().manual_seed(int(seed))

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if self._gates is None or not model.training:
            return
        candidates = sorted(self._gates.layer_gates)
        if self.config.mode == "every_other":
            candidates = [i for i in candidates if i % 2 == 1]
        draws = torch.rand(len(candidates), generator=self._generator)
        self.dropped = [i for i, d in zip(candidates, draws.tolist()) if d < self.config.p]
        for i in self.dropped:
            self._gates.layer_gates[i].fill_(0.0)

    def on_optimizer_step(self, args, state, control, **kwargs):
        # Reset as soon as the step's backward passes are done, before any callback's on_step_end: a callback listed
        # before this one (PruningCallback at_step, scoring every_n_steps) must see the full model there.
        self._reset()

    def on_step_end(self, args, state, control, **kwargs):
        self._reset()

    def _reset(self) -> None:
        if self._gates is not None:
            for gate in self._gates.layer_gates.values():
                gate.fill_(1.0)
        self.dropped = []

    def on_train_end(self, args, state, control, **kwargs):
        if self._gates is not None:
            self._gates.remove()
            self._gates = None
