"""`SparsifyConfig`: what to prune, how much, by which criterion and pattern (validated once, here)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..criteria import check_call, criterion_names, get_criterion
from ..ranking import SCOPES
from .patterns import Pattern, parse_pattern


@dataclass(frozen=True)
class SparsifyConfig:
    """Configuration of `sparsify`. Invalid values raise `ValueError` naming the field."""

    sparsity: float | None = field(default=None, metadata={
        "help": "Fraction of the targeted weights set to zero, in [0, 1). Optional for N:M (fixed at 1 - N/M)."})
    criterion: str = field(default="magnitude", metadata={
        "help": "Importance: 'magnitude' |w|, 'taylor' |w * grad| over a dataloader, 'random' (baseline), or any "
                "criterion registered for 'weights' (hfprune.criteria.criterion_names('weights'))."})
    pattern: str = field(default="unstructured", metadata={
        "help": "'unstructured', 'N:M' (N kept in every M along the input dim, e.g. '2:4'), or blocks 'RxC'."})
    scope: str = field(default="layer", metadata={
        "help": "'layer': every tensor reaches the sparsity; 'global': one ranking across all targets."})
    targets: tuple[str, ...] | None = field(default=None, metadata={
        "help": "None for the attention and FFN projections of every layer, or name patterns (glob or regex over "
                "full module names); 'default' can be mixed with patterns, e.g. ('default', 'classifier*')."})
    max_batches: int | None = field(default=None, metadata={
        "help": "Taylor only: stop scoring after this many batches (None: the whole dataloader)."})
    seed: int = field(default=0, metadata={"help": "Seed of the random criterion."})
    criterion_options: dict = field(default_factory=dict, metadata={
        "help": "Options of the chosen criterion (the named keyword parameters of its function)."})

    def __post_init__(self):
        names = criterion_names("weights")
        if self.criterion not in names:
            raise ValueError(f"criterion={self.criterion!r} is not one of {names}")
        check_call(get_criterion(self.criterion, "weights"), caller="sparsify", seed=self.seed,
                   options=self.criterion_options)
        if self.scope not in SCOPES:
            raise ValueError(f"scope={self.scope!r} is not one of {SCOPES}")
        pattern = parse_pattern(self.pattern)
        fixed = pattern.fixed_sparsity
        if fixed is not None:
            if self.sparsity is not None and abs(self.sparsity - fixed) > 1e-6:
                raise ValueError(f"pattern '{pattern}' always has sparsity {fixed:g}; got sparsity={self.sparsity}")
            object.__setattr__(self, "sparsity", fixed)
        elif self.sparsity is None:
            raise ValueError(f"sparsity is required for pattern '{pattern}' (a fraction in [0, 1))")
        if isinstance(self.sparsity, bool) or not isinstance(self.sparsity, (int, float)):
            raise TypeError(f"sparsity must be a number in [0, 1); got {self.sparsity!r}")
        if not 0.0 <= float(self.sparsity) < 1.0:
            raise ValueError(f"sparsity={self.sparsity} is outside [0, 1) (1.0 would zero every targeted weight)")
        if isinstance(self.targets, str):
            object.__setattr__(self, "targets", (self.targets,))
        elif self.targets is not None:
            object.__setattr__(self, "targets", tuple(self.targets))
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"max_batches={self.max_batches} must be >= 1 (or None for the whole dataloader)")

    @property
    def parsed_pattern(self) -> Pattern:
        return parse_pattern(self.pattern)
