"""`PruningCallback`: score at a chosen step or epoch, then recover by training on; the model ends up pruned.

mode="mask" (default): the plan is masked for the rest of training (the optimizer and its state stay as they are;
masked units get no gradient, so the network adapts to their absence), and at train end the mask is removed and
the units are cut out. mode="prune": the units are cut out at once and the optimizer is re-pointed to the new,
smaller tensors, so recovery training already runs on the smaller, faster model. Either way `trainer.save_model()`
/ `push_to_hub()` write the pruned model, with its structure in `config.hfprune`, which `hfprune.load_pruned`
rebuilds.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

from transformers import TrainerCallback

from ..arch import unwrap_model
from ..criteria import criterion_names, get_criterion
from ..importance import channel_importance, head_importance, layer_importance, neuron_importance
from ..importance.common import check_ratio, is_distributed
from ..masking import mask
from ..plan import PruningPlan
from ..selection import select_channels, select_heads, select_layers, select_neurons
from ..surgery import prune
from .base import build_config, check_choice, check_positive, dataloader_for, write_section
from .optim import parameter_owners, repoint_optimizer

logger = logging.getLogger("hfprune")


@dataclass
class PruningConfig:
    """What `PruningCallback` removes, chosen how, and when."""

    heads_ratio: float | None = field(default=None, metadata={"help": "Fraction of attention heads to remove."})
    neurons_ratio: float | None = field(default=None, metadata={"help": "Fraction of FFN neurons to remove."})
    channels_ratio: float | None = field(default=None, metadata={
        "help": "CNNs: fraction of the channels of `channel_groups` to remove (scored by channel_criterion)."})
    channel_criterion: str = field(default="l1", metadata={
        "help": f"CNN channel criterion, one of {criterion_names('channels')}."})
    channel_groups: str = field(default="all", metadata={
        "help": "CNN channel groups scored: 'all' prunable, 'inner' (free) or 'coupled' (residual widths)."})
    layers: int | list[int] | None = field(default=None, metadata={
        "help": "Layers to remove: a count (the least important by layer_method) or explicit indices."})
    criterion: str = field(default="michel", metadata={
        "help": f"Head criterion, one of {criterion_names('heads')}."})
    neuron_criterion: str = field(default="taylor", metadata={
        "help": f"Neuron criterion, one of {criterion_names('neurons')}."})
    layer_method: str = field(default="ablation", metadata={
        "help": f"Layer scoring, one of {criterion_names('layers')}."})
    at_step: int | None = field(default=None, metadata={"help": "Score and mask after this optimizer step."})
    at_epoch: int | None = field(default=None, metadata={"help": "Score and mask at the end of this epoch."})
    mode: str = field(default="mask", metadata={
        "help": "'mask': mask for the rest of training, prune at train end; 'prune': prune at once (one process)."})
    prune_at_end: bool = field(default=True, metadata={
        "help": "mode='mask': remove the units physically at train end (False: leave the model masked)."})
    scope: str = field(default="global", metadata={"help": "Selection over the whole model or per layer."})
    min_per_layer: int = field(default=1, metadata={"help": "Heads / neurons kept in every layer."})
    round_to: int | None = field(default=None, metadata={"help": "Round kept FFN widths to a multiple of this."})
    max_batches: int | None = field(default=None, metadata={"help": "Score on at most this many batches."})
    num_samples: int | None = field(default=None, metadata={"help": "Score on at most this many examples."})
    seed: int | None = field(default=None, metadata={"help": "Seed of the 'random' criteria."})
    show_progress: bool = field(default=False, metadata={"help": "Show a tqdm bar while scoring."})
    output_file: str = field(default="importance.json", metadata={
        "help": "JSON file in args.output_dir; this callback fills its 'pruning' section."})
    distill: bool | dict | None = field(default=None, metadata={
        "help": "Recover by distillation from the model as it was just before pruning (a frozen deep copy): True, "
                "or {alpha, temperature, hidden_weight}. Needs trainer= to be an hfprune.DistillationTrainer."})

    def __post_init__(self):
        owner = "PruningCallback"
        check_ratio(f"{owner}: heads_ratio", self.heads_ratio)
        check_ratio(f"{owner}: neurons_ratio", self.neurons_ratio)
        check_ratio(f"{owner}: channels_ratio", self.channels_ratio)
        for name, unit in self._CRITERIA.items():
            check_choice(owner, name, getattr(self, name), criterion_names(unit))
        check_choice(owner, "channel_groups", self.channel_groups, ("all", "inner", "coupled"))
        check_choice(owner, "mode", self.mode, ("mask", "prune"))
        check_choice(owner, "scope", self.scope, ("global", "layer"))
        for name in ("at_step", "at_epoch", "max_batches", "num_samples", "round_to"):
            check_positive(owner, name, getattr(self, name))
        if self.at_step is not None and self.at_epoch is not None:
            raise ValueError(f"{owner}: give at_step or at_epoch, not both")
        if isinstance(self.layers, bool) or not (self.layers is None or isinstance(self.layers, (int, list))):
            raise ValueError(f"{owner}: layers must be a count, a list of layer indices or None, got {self.layers!r}")
        if isinstance(self.layers, int) and self.layers < 0:
            raise ValueError(f"{owner}: layers (a count) must be >= 0, got {self.layers}")
        if isinstance(self.layers, list):
            PruningPlan(layers=self.layers)  # negative / duplicate / non-integer indices: an error naming them now
        if self.heads_ratio is None and self.neurons_ratio is None and not self.layers \
                and self.channels_ratio is None:
            raise ValueError(f"{owner}: nothing to prune; set heads_ratio, neurons_ratio, layers or channels_ratio")
        if self.distill is not None and self.distill is not False:
            from ..distill import distill_options

            self.distill = distill_options(self.distill, owner)
        else:
            self.distill = None
        # Checked now rather than when scoring, which may be at the end of a long training run.
        for name in self._CRITERIA:
            criterion = self.criterion_for(name)
            if criterion is not None and criterion.needs_seed and self.seed is None:
                raise ValueError(f"{owner}: {name}={criterion.name!r} needs a seed, e.g. seed=0")

    # field -> the unit kind whose registered criteria it chooses among
    _CRITERIA = {"criterion": "heads", "neuron_criterion": "neurons", "layer_method": "layers",
                 "channel_criterion": "channels"}

    def criterion_for(self, name: str):
        """The criterion field `name` chooses, or None when that unit kind is not scored by this configuration."""
        used = {"criterion": self.heads_ratio is not None, "neuron_criterion": self.neurons_ratio is not None,
                "layer_method": isinstance(self.layers, int) and self.layers > 0,
                "channel_criterion": self.channels_ratio is not None}[name]
        return get_criterion(getattr(self, name), self._CRITERIA[name]) if used else None


class PruningCallback(TrainerCallback):
    """Score and select units during training, recover by training on, and end with a physically pruned model.

    Heads are scored with `criterion` (Michel et al., 2019 by default), neurons with `neuron_criterion` (Taylor,
    Molchanov et al., 2017) and layers with `layer_method` (LayerDrop-style ablation, Fan et al., 2020), all on the
    model as it is at the chosen step / epoch end (at train end when neither is set). mode="mask" masks the plan for
    the rest of training and prunes at train end (`prune_at_end=False` leaves the mask on instead); mode="prune"
    prunes at once and re-points the optimizer to the smaller tensors (their Adam moments restart; one process
    only, since DDP / FSDP hold the old parameters).

    CNNs: `channels_ratio` removes that fraction of the channels of `channel_groups` ("all", "inner", "coupled"),
    scored by `channel_criterion` (`bn_scale` after `NetworkSlimmingCallback`, `l1`, `magnitude`, `taylor`,
    `random`) and selected with `scope` / `round_to` / `min_per_layer` (per channel group).

    Args:
        dataset (`Dataset`, `DataLoader` or list of batch dicts, *optional*): scoring data; defaults to the trainer's
            eval dataset (see `hfprune.callbacks.base`).
        trainer (`Trainer`, *optional*): lets the callback use `trainer.get_eval_dataloader`.
        options: the fields of `PruningConfig` (`heads_ratio`, `neurons_ratio`, `layers`, `criterion`, `at_step`,
            `at_epoch`, `mode`, ...).

    Example:
        ```python
        >>> callback = hfprune.PruningCallback(heads_ratio=0.5, neurons_ratio=0.3, at_epoch=1, dataset=dev)
        >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[callback]); trainer.train()
        >>> trainer.save_model("out/pruned")           # the pruned model; hfprune.load_pruned("out/pruned")
        >>> callback.plan
        ```
    """

    def __init__(self, dataset=None, *, trainer=None, **options):
        self.config = build_config(PruningConfig, "PruningCallback", options)
        self.dataset = dataset
        # ----- runtime state (filled during training; not configuration) -----
        self.trainer = trainer
        self.plan: PruningPlan | None = None  # the selected units, indexed as the model was when scored
        self.scores: dict = {}  # "heads" / "neurons" / "layers" -> the scores the plan was chosen from
        self.pruned = False  # whether the plan was applied physically
        self._gates = None  # the mask handle while training goes on

    def bind(self, trainer) -> PruningCallback:
        self.trainer = trainer
        self._check_distill_trainer()
        return self

    def _check_distill_trainer(self) -> None:
        if self.config.distill is None:
            return
        from ..distill import DistillationTrainer

        if not isinstance(self.trainer, DistillationTrainer):
            raise ValueError("PruningCallback: distill= needs trainer= (or .bind(trainer)) to be an "
                             f"hfprune.DistillationTrainer, got {type(self.trainer).__name__}")

    def _start_distillation(self, model) -> None:
        """Freeze a copy of the model as it is now (before the mask / surgery) as the trainer's teacher."""
        import copy

        d = self.config.distill
        trainer = self.trainer
        trainer.alpha, trainer.temperature, trainer.hidden_weight = d["alpha"], d["temperature"], d["hidden_weight"]
        trainer.set_teacher(copy.deepcopy(model))

    def _select(self, args, state, kwargs) -> None:
        # The model inside a DDP / accelerate wrapper (a custom loop may hand the wrapper to the callbacks).
        c, model = self.config, unwrap_model(kwargs["model"])
        needs_data = any(found is not None and found.needs_data for found in map(c.criterion_for, c._CRITERIA))
        data = dataloader_for("PruningCallback", self.dataset, self.trainer, kwargs, args) if needs_data else None
        limits = {"max_batches": c.max_batches, "num_samples": c.num_samples, "show_progress": c.show_progress}
        plan = PruningPlan()
        if c.heads_ratio is not None:
            self.scores["heads"] = head_importance(model, data, criterion=c.criterion, seed=c.seed, **limits)
            plan.heads = select_heads(self.scores["heads"], ratio=c.heads_ratio, scope=c.scope,
                                      min_per_layer=c.min_per_layer).heads
        if c.neurons_ratio is not None:
            self.scores["neurons"] = neuron_importance(model, data, criterion=c.neuron_criterion, seed=c.seed,
                                                       **limits)
            plan.neurons = select_neurons(self.scores["neurons"], ratio=c.neurons_ratio, scope=c.scope,
                                          min_per_layer=c.min_per_layer, round_to=c.round_to).neurons
        if isinstance(c.layers, int) and c.layers:
            self.scores["layers"] = layer_importance(model, data, method=c.layer_method, **limits)
            plan.layers = select_layers(self.scores["layers"], count=c.layers).layers
        elif isinstance(c.layers, list):
            plan.layers = sorted(c.layers)
        if c.channels_ratio is not None:  # CNN channel groups
            self.scores["channels"] = channel_importance(model, data, criterion=c.channel_criterion, seed=c.seed,
                                                         groups=c.channel_groups, **limits)
            plan.channels = select_channels(self.scores["channels"], ratio=c.channels_ratio, scope=c.scope,
                                            round_to=c.round_to, min_per_group=c.min_per_layer).channels
        plan = PruningPlan(heads=plan.heads, neurons=plan.neurons, layers=plan.layers, channels=plan.channels,
                           meta={"callback": "PruningCallback", "global_step": state.global_step,
                                 "config": asdict(c)})
        self.plan = plan
        if c.distill is not None:
            self._start_distillation(model)
        if c.mode == "prune":
            self._prune_now(model, kwargs.get("optimizer"))
        else:
            self._gates = mask(model, plan)
        logger.info("PruningCallback: step %d: %s %d heads, %d neurons, layers %s, %d channels", state.global_step,
                    "pruned" if self.pruned else "masking", plan.num_heads(), plan.num_neurons(), plan.layers,
                    plan.num_channels())
        self._write(args, state)

    def _prune_now(self, model, optimizer) -> None:
        if is_distributed():
            raise RuntimeError("PruningCallback: mode='prune' cannot resize a model that DDP / FSDP already wrapped; "
                               "use mode='mask' (pruned at train end) in distributed training")
        owners = parameter_owners(model)
        prune(model, self.plan)
        if optimizer is not None:
            repoint_optimizer(model, optimizer, owners)
        self.pruned = True

    def _write(self, args, state) -> None:
        if state.is_world_process_zero:
            write_section(args.output_dir, self.config.output_file, "pruning", {
                "callback": "PruningCallback", "config": asdict(self.config),
                "state": {"global_step": state.global_step, "epoch": state.epoch, "pruned": self.pruned},
                "scores": self.scores, "plan": self.plan.to_dict() if self.plan else None,
            })

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self._check_distill_trainer()
        # Explicit layer indices are checked against the model before training, not at the scoring step.
        if self.plan is None and isinstance(self.config.layers, list) and model is not None:
            PruningPlan(layers=self.config.layers).validate(unwrap_model(model))

    def on_step_end(self, args, state, control, **kwargs):
        if self.plan is None and self.config.at_step is not None and state.global_step >= self.config.at_step:
            self._select(args, state, kwargs)

    def on_epoch_end(self, args, state, control, **kwargs):
        at = self.config.at_epoch
        if self.plan is None and at is not None and state.epoch is not None and round(state.epoch) >= at:
            self._select(args, state, kwargs)

    def on_train_end(self, args, state, control, **kwargs):
        if self.plan is None:
            if self.config.at_step is not None or self.config.at_epoch is not None:
                logger.warning("PruningCallback: training ended before the chosen step/epoch; scoring now")
            self._select(args, state, kwargs)
        if self.config.prune_at_end and not self.pruned:
            self.remove_mask()
            prune(unwrap_model(kwargs["model"]), self.plan)
            self.pruned = True
            self._write(args, state)

    def remove_mask(self) -> None:
        """Take the mask off the model (mode="mask", prune_at_end=False); the plan stays in `.plan`."""
        if self._gates is not None:
            self._gates.remove()
            self._gates = None
