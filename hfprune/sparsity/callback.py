"""`GradualPruningCallback`: gradual magnitude pruning inside `Trainer.train()` (Zhu & Gupta 2017)."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field

from transformers import TrainerCallback

from ..criteria import get_criterion
from .config import SparsifyConfig
from .core import sparsify
from .handle import SparsityHandle
from .patterns import parse_pattern
from .schedule import KINDS, SparsitySchedule

logger = logging.getLogger(__name__)


def _is_n_m(pattern: str) -> bool:
    return parse_pattern(pattern).kind == "n:m"


@dataclass(frozen=True)
class GradualPruningConfig:
    """Configuration of `GradualPruningCallback`. Invalid values raise `ValueError` naming the field."""

    final_sparsity: float = field(metadata={"help": "Sparsity of the targeted weights at end_step, in [0, 1)."})
    initial_sparsity: float = field(default=0.0, metadata={"help": "Sparsity applied at start_step."})
    start_step: int = field(default=0, metadata={"help": "Optimizer step of the first pruning event."})
    end_step: int | None = field(default=None, metadata={
        "help": "Step where final_sparsity is reached; None: 75% of the run's max_steps, leaving the rest to recover."})
    frequency: int = field(default=100, metadata={"help": "Recompute the masks every this many steps."})
    schedule: str = field(default="cubic", metadata={"help": f"One of {KINDS}."})
    criterion: str = field(default="magnitude", metadata={
        "help": "A weight criterion: 'magnitude', 'taylor' (scored on taylor_batches batches of the train "
                "dataloader), 'random', or any registered for 'weights' (hfprune.criteria.criterion_names)."})
    pattern: str = field(default="unstructured", metadata={
        "help": "'unstructured' or blocks 'RxC'; N:M has a fixed sparsity, so it needs schedule='one-shot'."})
    scope: str = field(default="layer", metadata={"help": "'layer' or 'global'."})
    targets: tuple[str, ...] | None = field(default=None, metadata={
        "help": "None for the attention and FFN projections, or name patterns (see hfprune.sparsify)."})
    taylor_batches: int = field(default=8, metadata={
        "help": "Batches of the train dataloader scored per update by a criterion that needs data ('taylor')."})
    finalize_on_end: bool = field(default=True, metadata={
        "help": "At the end of training fold the masks into the weights and detach the hooks."})

    def __post_init__(self):
        # The schedule and sparsify configurations validate their own fields; build them once to raise early.
        self.schedule_for(max_steps=max(self.end_step or 0, self.start_step) or 1)
        sparsify_config = SparsifyConfig(sparsity=None if _is_n_m(self.pattern) else self.final_sparsity,
                                         criterion=self.criterion, pattern=self.pattern, scope=self.scope,
                                         targets=self.targets)
        if sparsify_config.parsed_pattern.kind == "n:m" and self.schedule != "one-shot":
            raise ValueError(f"pattern={self.pattern!r} has a fixed sparsity; use schedule='one-shot' with it")
        if self.taylor_batches < 1:
            raise ValueError(f"taylor_batches={self.taylor_batches} must be >= 1")

    def schedule_for(self, max_steps: int) -> SparsitySchedule:
        end = self.end_step if self.end_step is not None else max(self.start_step, int(0.75 * max_steps))
        return SparsitySchedule(final_sparsity=self.final_sparsity, initial_sparsity=self.initial_sparsity,
                                start_step=self.start_step, end_step=end, frequency=self.frequency,
                                kind=self.schedule)


class GradualPruningCallback(TrainerCallback):
    """Raise the sparsity of the targeted weights from `initial_sparsity` to `final_sparsity` during training.

    Implements gradual magnitude pruning (Zhu & Gupta 2017, "To prune, or not to prune"): masks are recomputed every
    `frequency` optimizer steps on the cubic schedule (linear and one-shot as options); weights pruned once stay
    pruned, and stay exactly zero between updates (see `SparsityHandle`). The measured sparsity is added to the
    Trainer's logs as `sparsity` (and the schedule's value as `sparsity_target`).

    Args:
        final_sparsity (`float`): sparsity at `end_step`, in [0, 1).
        kwargs: the other fields of `GradualPruningConfig` (`initial_sparsity`, `start_step`, `end_step`,
            `frequency`, `schedule`, `criterion`, `pattern`, `scope`, `targets`, `taylor_batches`, `finalize_on_end`).

    Example:
        ```python
        >>> from transformers import Trainer
        >>> pruning = GradualPruningCallback(final_sparsity=0.9, frequency=50)
        >>> trainer = Trainer(model=model, args=args, train_dataset=train, callbacks=[pruning])
        >>> trainer.train()                       # ends at 90% sparsity, masks folded into the weights
        >>> trainer.save_model("out/sparse90")    # loads back with from_pretrained
        ```
    """

    def __init__(self, final_sparsity: float, **kwargs):
        if "targets" in kwargs and kwargs["targets"] is not None:
            kwargs["targets"] = (kwargs["targets"],) if isinstance(kwargs["targets"], str) else tuple(kwargs["targets"])
        self.config = GradualPruningConfig(final_sparsity=final_sparsity, **kwargs)
        # --- runtime state (set during training; nothing configurable) ---
        self.schedule: SparsitySchedule | None = None
        self.handle: SparsityHandle | None = None
        self.target_sparsity = 0.0

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        self.schedule = self.config.schedule_for(state.max_steps)
        if self.schedule.kind != "one-shot" and self.schedule.end_step > state.max_steps:
            raise ValueError(f"GradualPruningCallback: end_step={self.schedule.end_step} is after the run's last step "
                             f"({state.max_steps}); final_sparsity={self.config.final_sparsity} would never be reached")
        if state.global_step >= self.config.start_step:  # also a resumed run: catch up with the schedule
            self._prune(model, state.global_step, train_dataloader)

    def on_step_end(self, args, state, control, model=None, train_dataloader=None, **kwargs):
        if self.schedule is not None and self.schedule.is_update_step(state.global_step):
            self._prune(model, state.global_step, train_dataloader)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.handle is None or logs is None or "loss" not in logs:
            return
        values = {"sparsity": round(self.handle.mask_sparsity(), 6), "sparsity_target": self.target_sparsity}
        logs.update(values)
        # Trainer.log stores a copy in log_history before calling on_log; keep trainer_state.json in step.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(values)

    def on_train_end(self, args, state, control, **kwargs):
        if self.handle is not None and self.config.finalize_on_end:
            self.handle.finalize()

    def _prune(self, model, step: int, train_dataloader) -> None:
        sparsity = self.schedule.sparsity_at(step)
        needs_data = get_criterion(self.config.criterion, "weights").needs_data
        dataloader = train_dataloader if needs_data else None
        if self.handle is None:
            c = self.config
            self.handle = sparsify(model, None if _is_n_m(c.pattern) else sparsity, criterion=c.criterion,
                                   pattern=c.pattern, scope=c.scope, targets=c.targets, dataloader=dataloader,
                                   max_batches=c.taylor_batches)
        elif sparsity != self.handle.config.sparsity:
            self.handle.update(sparsity, dataloader=dataloader)
        self.target_sparsity = float(self.handle.config.sparsity)
        logger.info("step %d: sparsity -> %.4f", step, self.target_sparsity)

    def bind(self, trainer) -> GradualPruningCallback:
        """Move this callback to the front of `trainer`'s callback list and return it.

        The Trainer calls `on_log` on callbacks in order, and its reporting callbacks (printer, TensorBoard, W&B) are
        registered before user callbacks, so without this they report each log before `sparsity` is added to it.
        Unbound, `sparsity` still reaches `trainer.state.log_history` and every callback after this one.
        """
        callbacks = trainer.callback_handler.callbacks
        if self not in callbacks:
            trainer.add_callback(self)
        callbacks.remove(self)
        callbacks.insert(0, self)
        return self

    def __repr__(self) -> str:
        fields = ", ".join(f"{f.name}={getattr(self.config, f.name)!r}" for f in dataclasses.fields(self.config))
        return f"GradualPruningCallback({fields})"
