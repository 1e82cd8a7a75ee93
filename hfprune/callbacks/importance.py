"""Trainer callbacks that score heads, FFN neurons or layers at the end of training (and every N steps)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from transformers import TrainerCallback

from ..arch import unwrap_model
from ..criteria import criterion_names, get_criterion
from ..importance import head_importance, layer_importance, neuron_importance
from .base import build_config, check_choice, check_positive, dataloader_for, write_section


@dataclass
class ScoringConfig:
    """When and on how much data a scoring callback scores."""

    every_n_steps: int | None = field(default=None, metadata={"help": "Also score every N optimizer steps."})
    max_batches: int | None = field(default=None, metadata={"help": "Score on at most this many batches."})
    num_samples: int | None = field(default=None, metadata={"help": "Score on at most this many examples."})
    show_progress: bool = field(default=False, metadata={"help": "Show a tqdm bar while scoring."})
    output_file: str = field(default="importance.json", metadata={
        "help": "JSON file in args.output_dir; each callback fills its own section (heads, neurons, layers)."})

    # The unit kind scored and the field naming its criterion (set by each subclass).
    _unit = ""
    _criterion_field = "criterion"

    def __post_init__(self):
        owner = type(self).__name__
        for name in ("every_n_steps", "max_batches", "num_samples"):
            check_positive(owner, name, getattr(self, name))
        if not self.output_file or "/" in self.output_file or "\\" in self.output_file:
            raise ValueError(f"{owner}: output_file must be a plain file name, got {self.output_file!r}")
        if self._unit:
            name = getattr(self, self._criterion_field)
            check_choice(owner, self._criterion_field, name, criterion_names(self._unit))
            if get_criterion(name, self._unit).needs_seed and getattr(self, "seed", None) is None:
                raise ValueError(f"{owner}: {self._criterion_field}={name!r} needs a seed, e.g. seed=0")

    def scoring_criterion(self):
        """The registered criterion these options choose (None for the base class)."""
        return get_criterion(getattr(self, self._criterion_field), self._unit) if self._unit else None


@dataclass
class HeadScoringConfig(ScoringConfig):
    _unit = "heads"
    criterion: str = field(default="michel", metadata={
        "help": f"Head criterion, one of {criterion_names('heads')}."})
    normalize_layers: bool = field(default=True, metadata={"help": "Divide each layer's scores by their L2 norm."})
    normalize_global: bool = field(default=True, metadata={"help": "Min-max scale all scores to [0, 1]."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the 'random' criterion."})


@dataclass
class NeuronScoringConfig(ScoringConfig):
    _unit = "neurons"
    criterion: str = field(default="taylor", metadata={
        "help": f"Neuron criterion, one of {criterion_names('neurons')}."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the 'random' criterion."})


@dataclass
class LayerScoringConfig(ScoringConfig):
    _unit = "layers"
    _criterion_field = "method"
    method: str = field(default="ablation", metadata={
        "help": f"Layer criterion, one of {criterion_names('layers')}: 'ablation' skips each layer, 'gate' is its "
                "gradient estimate."})


class _ScoringCallback(TrainerCallback):
    config_class = ScoringConfig
    units = ""

    def __init__(self, dataset=None, *, trainer=None, **options):
        self.config = build_config(self.config_class, type(self).__name__, options)
        self.dataset = dataset
        # ----- runtime state (filled during training; not configuration) -----
        self.trainer = trainer  # optional: gives access to trainer.get_eval_dataloader
        self.scores = None  # the latest scores
        self.history: list[dict] = []  # {"step": int, "scores": ...} for every scoring

    def bind(self, trainer) -> _ScoringCallback:
        """Use `trainer.get_eval_dataloader` to build the scoring data (collator, sharding); returns `self`."""
        self.trainer = trainer
        return self

    def _compute(self, model, dataloader):
        raise NotImplementedError

    def _run(self, args, state, kwargs) -> None:
        # Criteria that read no data ("magnitude", "random"): do not demand (or build) a dataloader for them.
        criterion = self.config.scoring_criterion()
        data_free = criterion is not None and not criterion.needs_data
        dataloader = None if data_free else dataloader_for(type(self).__name__, self.dataset, self.trainer, kwargs,
                                                           args)
        self.scores = self._compute(unwrap_model(kwargs["model"]), dataloader)
        self.history.append({"step": state.global_step, "scores": self.scores})
        if state.is_world_process_zero:
            write_section(args.output_dir, self.config.output_file, self.units, {
                "callback": type(self).__name__, "config": asdict(self.config),
                "state": {"global_step": state.global_step, "epoch": state.epoch},
                "scores": self.scores, "history": self.history,
            })

    def on_step_end(self, args, state, control, **kwargs):
        n = self.config.every_n_steps
        if n and state.global_step % n == 0:
            self._run(args, state, kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if not self.history or self.history[-1]["step"] != state.global_step:
            self._run(args, state, kwargs)


class HeadImportanceCallback(_ScoringCallback):
    """Scores attention heads (Michel et al., 2019, by default) at the end of training and every N steps.

    Args:
        dataset (`Dataset`, `DataLoader` or list of batch dicts, *optional*): the scoring data; defaults to the
            trainer's eval dataset (see `hfprune.callbacks.base`).
        trainer (`Trainer`, *optional*): lets the callback use `trainer.get_eval_dataloader`.
        options: the fields of `HeadScoringConfig` (`criterion`, `every_n_steps`, `max_batches`, `num_samples`,
            `normalize_layers`, `normalize_global`, `seed`, `show_progress`, `output_file`).

    Example:
        ```python
        >>> callback = hfprune.HeadImportanceCallback(dev_dataset, max_batches=20)
        >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[callback]); trainer.train()
        >>> callback.scores            # [num_layers, max_heads]; also in args.output_dir/importance.json
        ```
    """

    config_class = HeadScoringConfig
    units = "heads"

    def _compute(self, model, dataloader):
        c = self.config
        return head_importance(model, dataloader, criterion=c.criterion, normalize_layers=c.normalize_layers,
                               normalize_global=c.normalize_global, max_batches=c.max_batches,
                               num_samples=c.num_samples, show_progress=c.show_progress, seed=c.seed)


class NeuronImportanceCallback(_ScoringCallback):
    """Scores FFN neurons (first-order Taylor by default) at the end of training and every N steps.

    Args:
        dataset, trainer: as for `HeadImportanceCallback`.
        options: the fields of `NeuronScoringConfig` (`criterion`, `every_n_steps`, `max_batches`, ...).

    Example:
        ```python
        >>> callback = hfprune.NeuronImportanceCallback(dev_dataset, criterion="taylor", max_batches=20)
        ```
    """

    config_class = NeuronScoringConfig
    units = "neurons"

    def _compute(self, model, dataloader):
        c = self.config
        return neuron_importance(model, dataloader, criterion=c.criterion, max_batches=c.max_batches,
                                 num_samples=c.num_samples, show_progress=c.show_progress, seed=c.seed)


class LayerImportanceCallback(_ScoringCallback):
    """Scores whole layers (loss increase when skipped, or the layer-gate gradient) at train end / every N steps.

    Args:
        dataset, trainer: as for `HeadImportanceCallback`.
        options: the fields of `LayerScoringConfig` (`method`, `every_n_steps`, `max_batches`, ...).

    Example:
        ```python
        >>> callback = hfprune.LayerImportanceCallback(dev_dataset, method="ablation", max_batches=10)
        ```
    """

    config_class = LayerScoringConfig
    units = "layers"

    def _compute(self, model, dataloader):
        c = self.config
        return layer_importance(model, dataloader, method=c.method, max_batches=c.max_batches,
                                num_samples=c.num_samples, show_progress=c.show_progress)
