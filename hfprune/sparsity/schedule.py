"""Sparsity schedules for gradual pruning: cubic (Zhu & Gupta 2017), linear and one-shot.

Zhu & Gupta 2017, "To prune, or not to prune: exploring the efficacy of pruning for model compression":
s_t = s_f + (s_0 - s_f) * (1 - (t - t_0) / (t_end - t_0))^3 for t_0 <= t <= t_end, updated every k steps. Pruning
fast at first, while there are many redundant weights, and slowly near the end lets training recover.
"""

from __future__ import annotations

from dataclasses import dataclass, field

KINDS = ("cubic", "linear", "one-shot")


@dataclass(frozen=True)
class SparsitySchedule:
    """The sparsity to hold at each optimizer step.

    Example:
        ```python
        >>> s = SparsitySchedule(final_sparsity=0.9, start_step=0, end_step=100, frequency=10)
        >>> s.sparsity_at(0), round(s.sparsity_at(50), 4), s.sparsity_at(100)
        (0.0, 0.7875, 0.9)
        ```
    """

    final_sparsity: float = field(metadata={"help": "Sparsity reached at end_step, in [0, 1)."})
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity applied at start_step, in [0, 1)."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step of the first pruning event."})
    end_step: int = field(default=0, metadata={"help": "Step at which final_sparsity is reached (>= start_step)."})
    frequency: int = field(default=100, metadata={"help": "Masks are recomputed every this many steps."})
    kind: str = field(default="cubic", metadata={"help": "'cubic' (Zhu & Gupta), 'linear', or 'one-shot'."})

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"schedule kind={self.kind!r} is not one of {KINDS}")
        for name in ("final_sparsity", "initial_sparsity"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"{name}={value} is outside [0, 1)")
        if self.initial_sparsity > self.final_sparsity:
            raise ValueError(f"initial_sparsity={self.initial_sparsity} exceeds final_sparsity={self.final_sparsity}")
        if self.start_step < 0:
            raise ValueError(f"start_step={self.start_step} must be >= 0")
        if self.kind != "one-shot" and self.end_step < self.start_step:
            raise ValueError(f"end_step={self.end_step} is before start_step={self.start_step}")
        if self.frequency < 1:
            raise ValueError(f"frequency={self.frequency} must be >= 1")

    def sparsity_at(self, step: int) -> float:
        """Target sparsity after `step` optimizer steps (0 before start_step)."""
        if step < self.start_step:
            return 0.0
        if self.kind == "one-shot" or step >= self.end_step:
            return self.final_sparsity
        progress = (step - self.start_step) / (self.end_step - self.start_step)
        if self.kind == "linear":
            return self.initial_sparsity + (self.final_sparsity - self.initial_sparsity) * progress
        return self.final_sparsity + (self.initial_sparsity - self.final_sparsity) * (1.0 - progress) ** 3

    def is_update_step(self, step: int) -> bool:
        """Whether masks are recomputed at `step`: start_step, every `frequency` steps after it, and end_step."""
        if self.kind == "one-shot":
            return step == self.start_step
        if step < self.start_step or step > self.end_step:
            return False
        return step == self.end_step or (step - self.start_step) % self.frequency == 0
