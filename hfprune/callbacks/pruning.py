"""`PruningCallback`: score at a chosen step or epoch, then recover by training on; the model ends up pruned.

mode="mask" (default): the plan is masked for the rest of training (the optimizer and its state stay as they are;
masked units get no gradient, so the network adapts to their absence), and at train end the mask is removed and
the units are cut out. mode="prune": the units are cut out at once and the optimizer is re-pointed to the new,
smaller tensors, so recovery training already runs on the smaller, faster model. Either way `trainer.save_model()`
/ `push_to_hub()` write the pruned model, with its structure in `config.hfprune`, which `hfprune.load_pruned`
rebuilds, and the remote-code export that plain transformers loads (`trust_remote_code=True`; `announce.py`).
Scoring data and the checks before training: `scoring_data.py`.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import torch
from transformers import TrainerCallback

from ..arch import unwrap_model
from ..criteria import criterion_names, get_criterion
from ..importance import channel_importance, head_importance, layer_importance, neuron_importance
from ..importance.common import check_ratio
from ..masking import mask
from ..passes import is_distributed
from ..plan import PruningPlan
from ..selection import select_channels, select_heads, select_layers, select_neurons
from ..structure import model_structure
from ..surgery import prune
from .announce import announce, export_on_save, planned_totals, totals
from .base import build_config, check_choice, check_positive, write_section
from .optim import parameter_owners, repoint_optimizer
from .scoring_data import ScoringData, check_scoring_data, scoring_data

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
    scoring_data: str = field(default="train", metadata={
        "help": "Scoring data when no dataset is given: 'train' (a seeded slice of num_samples training examples, "
                "512 when None) or 'eval' (the trainer's eval dataset; needs trainer= or .bind(trainer))."})
    max_batches: int | None = field(default=None, metadata={"help": "Score on at most this many batches."})
    num_samples: int | None = field(default=None, metadata={
        "help": "Score on at most this many examples (the size of the training slice; 512 when None)."})
    seed: int | None = field(default=None, metadata={
        "help": "Seed of the 'random' criteria and of the training slice (args.seed when None)."})
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
        check_choice(owner, "scoring_data", self.scoring_data, ("train", "eval"))
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
            from ..recovery.kd import distill_options

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

    def used_criteria(self) -> list:
        """The registered criteria this configuration scores with (one per unit kind it prunes by score)."""
        return [found for found in map(self.criterion_for, self._CRITERIA) if found is not None]


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

    Scoring data: `dataset` when given; otherwise a seeded slice of the TRAINING set, never the eval set:
    `num_samples` examples (512 when None, or the whole training set when smaller), chosen by a permutation seeded
    with `seed` (`args.seed` when None), collated by the Trainer's collator. The eval dataset is read only with
    `scoring_data="eval"`. The slice is also trained on: the Trainer fixes its training set, step count and
    schedule before any callback runs, and the callback does not rewrite them (`hfprune.callbacks.scoring_data`
    says why); pass `dataset=` for a strictly unseen split. `plan.meta["scoring_data"]` records the examples used.

    Checked at `on_train_begin`, so a mistake fails before the first step with one `ValueError`: an empty or
    iterable training set, a collator that fails on the scoring examples, missing columns (one batch is run through
    the model), `scoring_data="eval"` without an eval dataset, and a plan this model cannot take (selection is
    tried on data-free scores of the same shape and the plan validated).

    Logged at WARNING (visible with default logging): "hfprune: masked at step 40 (...): heads 72 -> 36, FFN 18432
    -> 9216" when it masks, "hfprune: pruned at step 40: ..." / "pruned at train end ..." when it prunes. Once
    pruned, `model.save_pretrained` (so `trainer.save_model()`, checkpoints, `push_to_hub()`) also writes the
    remote-code export (`hfprune.remote.add_remote_code`): the folder loads without hfprune through
    `AutoModelFor*.from_pretrained(folder, trust_remote_code=True)`, and with `hfprune.load_pruned(folder)`.

    Args:
        dataset (`Dataset`, `DataLoader` or list of batch dicts, *optional*): scoring data (see above).
        trainer (`Trainer`, *optional*): needed for `scoring_data="eval"` and `distill=`; a dataset given is then
            prepared by `trainer.get_eval_dataloader(dataset)` (collator, column removal, sharding).
        options: the fields of `PruningConfig` (`heads_ratio`, `neurons_ratio`, `layers`, `criterion`, `at_step`,
            `at_epoch`, `mode`, `scoring_data`, `num_samples`, `seed`, ...).

    Example:
        ```python
        >>> callback = hfprune.PruningCallback(heads_ratio=0.5, neurons_ratio=0.3, at_epoch=1)
        >>> trainer = Trainer(model, args, train_dataset=train, callbacks=[callback]); trainer.train()
        >>> trainer.save_model("out/pruned")   # AutoModel...from_pretrained("out/pruned", trust_remote_code=True)
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
        self._data: ScoringData | None = None  # the scoring batches, built and checked at train begin
        self._before: dict | None = None  # unit totals when the plan was chosen (for the prune line)

    def bind(self, trainer) -> PruningCallback:
        self.trainer = trainer
        self._check_distill_trainer()
        return self

    def _check_distill_trainer(self) -> None:
        if self.config.distill is None:
            return
        from ..recovery.distill import DistillationTrainer

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

    def _needs_data(self) -> bool:
        return any(found.needs_data for found in self.config.used_criteria())

    def _scoring_data(self, args, kwargs) -> ScoringData | None:
        if self._data is None and self._needs_data():
            self._data = scoring_data("PruningCallback", self.config, self.dataset, self.trainer, args, kwargs)
        return self._data

    def _score(self, model, data) -> dict:
        """Scores per unit kind, with the configured criteria."""
        c = self.config
        limits = {"max_batches": c.max_batches, "num_samples": c.num_samples, "show_progress": c.show_progress}
        scores = {}
        if c.heads_ratio is not None:
            scores["heads"] = head_importance(model, data, criterion=c.criterion, seed=c.seed, **limits)
        if c.neurons_ratio is not None:
            scores["neurons"] = neuron_importance(model, data, criterion=c.neuron_criterion, seed=c.seed, **limits)
        if isinstance(c.layers, int) and c.layers:
            scores["layers"] = layer_importance(model, data, method=c.layer_method, **limits)
        if c.channels_ratio is not None:  # CNN channel groups
            scores["channels"] = channel_importance(model, data, criterion=c.channel_criterion, seed=c.seed,
                                                    groups=c.channel_groups, **limits)
        return scores

    def _choose(self, scores: dict) -> PruningPlan:
        """The plan the configuration selects from `scores` (explicit layer indices as given)."""
        c = self.config
        plan = PruningPlan()
        if "heads" in scores:
            plan.heads = select_heads(scores["heads"], ratio=c.heads_ratio, scope=c.scope,
                                      min_per_layer=c.min_per_layer).heads
        if "neurons" in scores:
            plan.neurons = select_neurons(scores["neurons"], ratio=c.neurons_ratio, scope=c.scope,
                                          min_per_layer=c.min_per_layer, round_to=c.round_to).neurons
        if "layers" in scores:
            plan.layers = select_layers(scores["layers"], count=c.layers).layers
        elif isinstance(c.layers, list):
            plan.layers = sorted(c.layers)
        if "channels" in scores:
            plan.channels = select_channels(scores["channels"], ratio=c.channels_ratio, scope=c.scope,
                                            round_to=c.round_to, min_per_group=c.min_per_layer).channels
        return plan

    def _select(self, args, state, kwargs) -> None:
        # The model inside a DDP / accelerate wrapper (a custom loop may hand the wrapper to the callbacks).
        c, model = self.config, unwrap_model(kwargs["model"])
        data = self._scoring_data(args, kwargs)
        self.scores.update(self._score(model, data.loader if data is not None else None))
        plan = self._choose(self.scores)
        meta = {"callback": "PruningCallback", "global_step": state.global_step, "config": asdict(c)}
        if data is not None:
            meta["scoring_data"] = data.meta
        self.plan = PruningPlan(heads=plan.heads, neurons=plan.neurons, layers=plan.layers, channels=plan.channels,
                                meta=meta)
        structure = model_structure(model)
        self._before = totals(structure)
        if c.distill is not None:
            self._start_distillation(model)
        scored_on = f"scored on {data.source}" if data is not None else "scored without data"
        if c.mode == "prune":
            self._prune_now(model, kwargs.get("optimizer"))
            self._announce(state, f"pruned at step {state.global_step} ({scored_on})", totals(model_structure(model)))
        else:
            self._gates = mask(model, self.plan)
            self._announce(state, f"masked at step {state.global_step} ({scored_on}; removed at train end)"
                           if c.prune_at_end else f"masked at step {state.global_step} ({scored_on})",
                           planned_totals(structure, self.plan))
        self._write(args, state)

    def _announce(self, state, what: str, after: dict) -> None:
        if state.is_world_process_zero:
            announce(what, self._before, after)

    @staticmethod
    def _check_single_process() -> None:
        if is_distributed():
            raise RuntimeError("PruningCallback: mode='prune' cannot resize a model that DDP / FSDP already wrapped; "
                               "use mode='mask' (pruned at train end) in distributed training")

    def _prune_now(self, model, optimizer) -> None:
        self._check_single_process()
        owners = parameter_owners(model)
        prune(model, self.plan)
        if optimizer is not None:
            repoint_optimizer(model, optimizer, owners)
        self.pruned = True
        export_on_save(model)

    def _write(self, args, state) -> None:
        if state.is_world_process_zero:
            write_section(args.output_dir, self.config.output_file, "pruning", {
                "callback": "PruningCallback", "config": asdict(self.config),
                "state": {"global_step": state.global_step, "epoch": state.epoch, "pruned": self.pruned},
                "scores": self.scores, "plan": self.plan.to_dict() if self.plan else None,
            })

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """Check everything that would otherwise fail only at the scoring step (see the class docstring)."""
        self._check_distill_trainer()
        if self.plan is not None or model is None:
            return
        model = unwrap_model(model)
        if self.config.mode == "prune":
            self._check_single_process()
        self._check_plan(model)
        self._data = None
        data = self._scoring_data(args, {**kwargs, "model": model})
        if data is not None:
            need_labels = any(found.needs_labels for found in self.config.used_criteria())
            check_scoring_data("PruningCallback", data, model, need_labels)
            logger.info("PruningCallback: will score on %s", data.source)

    def _check_plan(self, model) -> None:
        """Select on data-free scores of the real shapes and validate the plan: an impossible plan fails now."""
        try:
            self._choose(self._placeholder_scores(model)).validate(model)
        except (ValueError, TypeError, KeyError, NotImplementedError) as err:
            raise ValueError(f"PruningCallback: the plan cannot be applied to {type(model).__name__} (checked "
                             f"before training): {err}") from err

    def _placeholder_scores(self, model) -> dict:
        """Scores of the shapes the real ones will have: the configured criterion if it reads no data, else one
        that reads none ("magnitude"; "l1" for channels; zeros for layers)."""
        c = self.config
        stand_in = {"criterion": "magnitude", "neuron_criterion": "magnitude", "layer_method": None,
                    "channel_criterion": "l1"}
        names = {name: (found.name if not found.needs_data else stand_in[name])
                 for name, found in zip(c._CRITERIA, map(c.criterion_for, c._CRITERIA)) if found is not None}
        scores = {}
        if "criterion" in names:
            scores["heads"] = head_importance(model, criterion=names["criterion"], seed=c.seed, show_progress=False)
        if "neuron_criterion" in names:
            scores["neurons"] = neuron_importance(model, criterion=names["neuron_criterion"], seed=c.seed,
                                                  show_progress=False)
        if "layer_method" in names:
            scores["layers"] = torch.zeros(model_structure(model)["num_layers"])
        if "channel_criterion" in names:
            scores["channels"] = channel_importance(model, criterion=names["channel_criterion"], seed=c.seed,
                                                    groups=c.channel_groups)
        return scores

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
            model = unwrap_model(kwargs["model"])
            self.remove_mask()
            prune(model, self.plan)
            self.pruned = True
            export_on_save(model)
            self._announce(state, f"pruned at train end (step {state.global_step})", totals(model_structure(model)))
            self._write(args, state)

    def remove_mask(self) -> None:
        """Take the mask off the model (mode="mask", prune_at_end=False); the plan stays in `.plan`."""
        if self._gates is not None:
            self._gates.remove()
            self._gates = None
