"""Recipe configuration: the dataclasses that a YAML recipe and the `hfprune prune` flags both spell.

Each field carries its help text in `metadata["help"]` (the command line reuses it) and `__post_init__` range-checks
the values. Messages start with the field name; the loader prefixes the section (`prune.heads must be ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ...criteria import criterion_names
from ...ranking import SCOPES

IMAGE_TASK = "image-classification"  # the CNN path (hfprune.app.recipes.image); every other task is a GLUE task
CHANNEL_GROUPS = ("inner", "all", "coupled")


def __getattr__(name: str):
    # The criterion choices come from the registry when asked for, so a newly registered criterion is valid here.
    if name == "CRITERIA":
        return criterion_names("heads")
    if name == "LAYER_METHODS":
        return criterion_names("layers")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def _fraction(name: str, value: float) -> None:
    _check(0.0 <= value < 1.0, f"{name} must be a fraction in [0, 1), got {value!r}")


@dataclass
class ModelConfig:
    """The model to prune."""

    name_or_path: str = _f("", "checkpoint to start from: a local folder or a Hub id (safetensors weights)")
    max_length: int = _f(128, "maximum tokens per example (longer inputs are truncated)")

    def __post_init__(self):
        _check(bool(str(self.name_or_path).strip()), "name_or_path is required (a folder or a Hub id)")
        _check(8 <= self.max_length <= 8192, f"max_length must be in [8, 8192], got {self.max_length}")


@dataclass
class DataConfig:
    """Where the task's examples come from."""

    task: str = _f("", f"GLUE task: cola, sst2, mrpc, stsb, qqp, mnli, qnli, rte or wnli; or {IMAGE_TASK} (CNNs)")
    data_dir: str | None = _f(None, "folder in the original GLUE layout (SST-2/train.tsv ...); default: the Hub. "
                                    f"{IMAGE_TASK}: an imagefolder (train/ and validation/ of class folders)")
    train_file: str | None = _f(None, "CSV/TSV/JSON training file with the task's columns and a label column; "
                                      f"{IMAGE_TASK}: a .npz file with 'images' and 'labels' arrays")
    validation_file: str | None = _f(None, "CSV/TSV/JSON validation file, same columns (.npz for images)")
    dataset: str | None = _f(None, f"{IMAGE_TASK}: a `datasets` image dataset (Hub name or a save_to_disk folder) "
                                   "with train and validation/test splits, an image column and a label column")
    image_size: int | None = _f(None, f"{IMAGE_TASK}: resize images to this square size (default: the model "
                                      "config's image_size, else the images' own size)")
    max_train_samples: int | None = _f(None, "use a seeded random subset of this many training examples")
    max_eval_samples: int | None = _f(None, "evaluate on the first this-many validation examples")

    def __post_init__(self):
        from ..data.tasks import get_task

        if self.task == IMAGE_TASK:
            sources = [n for n in ("data_dir", "dataset", "train_file") if getattr(self, n)]
            _check(len(sources) == 1, f"{IMAGE_TASK} needs exactly one of data_dir (imagefolder), dataset or "
                                      f"train_file (.npz), got {sources or 'none'}")
            _check(not self.train_file or bool(self.validation_file),
                   "train_file (.npz) needs a validation_file (.npz) too")
            _check(self.image_size is None or 8 <= self.image_size <= 4096,
                   f"image_size must be in [8, 4096], got {self.image_size}")
            for name in ("max_train_samples", "max_eval_samples"):
                value = getattr(self, name)
                _check(value is None or value >= 1, f"{name} must be >= 1, got {value}")
            return
        _check(self.dataset is None and self.image_size is None,
               f"dataset and image_size are options of task {IMAGE_TASK} only")
        try:
            self.task = get_task(self.task).name
        except ValueError as err:  # the loader prefixes the section: "data.task: unknown task ..."
            raise ValueError(f"task: {err}") from None
        _check(not (self.data_dir and (self.train_file or self.validation_file)),
               "data_dir and train_file/validation_file exclude each other")
        for name in ("max_train_samples", "max_eval_samples"):
            value = getattr(self, name)
            _check(value is None or value >= 1, f"{name} must be >= 1, got {value}")


@dataclass
class TrainConfig:
    """One `transformers.Trainer` stage (the fine-tune before pruning, or the recovery after it)."""

    steps: int = _f(0, "optimizer steps (0 skips the stage)")
    batch_size: int = _f(32, "examples per step")
    learning_rate: float = _f(5e-5, "peak AdamW learning rate (linear decay)")
    weight_decay: float = _f(0.0, "AdamW weight decay")
    warmup_ratio: float = _f(0.0, "fraction of the steps spent warming the learning rate up")
    layerdrop: float = _f(0.0, "LayerDrop probability: skip each layer at random during this stage "
                               "(Fan et al., 2019), so that whole layers can be removed afterwards")
    layerdrop_mode: str = _f("uniform", "which layers LayerDrop may skip: uniform (any) or every_other")
    distill: dict | None = _f(None, "recover by distillation from the model before pruning: {alpha, temperature, "
                                    "hidden_weight} (hfprune.DistillationTrainer; {} for the defaults)")

    def __post_init__(self):
        _check(0 <= self.steps <= 10_000_000, f"steps must be >= 0, got {self.steps}")
        _check(1 <= self.batch_size <= 65536, f"batch_size must be >= 1, got {self.batch_size}")
        _check(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")
        _check(0 <= self.weight_decay < 1, f"weight_decay must be in [0, 1), got {self.weight_decay}")
        _fraction("warmup_ratio", self.warmup_ratio)
        _fraction("layerdrop", self.layerdrop)
        _check(self.layerdrop_mode in ("uniform", "every_other"),
               f"layerdrop_mode must be uniform or every_other, got {self.layerdrop_mode!r}")
        if self.distill is not None:
            from ...recovery.kd import distill_options

            try:
                self.distill = distill_options(self.distill)
            except ValueError as err:
                raise ValueError(str(err).replace("distill: ", "", 1).replace("DistillationTrainer: ",
                                                                                "distill.")) from None


@dataclass
class PruneConfig:
    """What to remove and how to score it."""

    heads: float = _f(0.0, "fraction of attention heads to remove")
    ffn: float = _f(0.0, "fraction of FFN neurons to remove")
    layers: int = _f(0, "number of whole layers to remove")
    criterion: str = _f("michel", "head/neuron importance criterion: " + ", ".join(criterion_names("heads"))
                        + " (for neurons: the same name when registered for neurons, otherwise taylor)")
    layer_method: str = _f("ablation", f"layer importance method: {', '.join(criterion_names('layers'))}")
    scope: str = _f("global", "rank heads and neurons over the whole model (global) or within each layer (layer)")
    min_heads_per_layer: int = _f(1, "never remove the last this-many heads of a layer")
    round_ffn_to: int = _f(1, "keep a multiple of this many FFN neurons per layer (8 or 64 suit fast kernels)")
    score_batches: int = _f(32, "training batches used to score importance")
    channels: float = _f(0.0, f"{IMAGE_TASK}: fraction of the CNN's channels (of channel_groups) to remove")
    channel_criterion: str = _f("l1", "CNN channel criterion: " + ", ".join(criterion_names("channels")))
    channel_groups: str = _f("inner", "CNN channel groups scored: inner (free), all prunable, or coupled")
    channel_compensate: bool = _f(False, "CNN: fold the removed channels' mean contribution (measured on the score "
                                         "batches) into the next layers' biases / BatchNorm means before removal "
                                         "(hfprune.channel_compensation)")
    sweep: list = field(default_factory=list, metadata={
        "help": "also evaluate the masked model at these head fractions (metric-vs-fraction plot)"})
    budget: dict | None = _f(None, "prune to a budget instead of ratios (Kwon et al., 2022, no retraining): one of "
                                   "{flops: F}, {params: F}, {latency: F}, F the fraction of the dense model kept")
    budget_samples: int = _f(2048, "training samples read by the budget search (Fisher and mask tuning)")
    budget_tune: bool = _f(True, "budget search: solve and fold the least-squares mask scales")

    def __post_init__(self):
        _fraction("heads", self.heads)
        _fraction("channels", self.channels)
        channel_criteria = criterion_names("channels")
        _check(self.channel_criterion in channel_criteria,
               f"channel_criterion must be one of {', '.join(channel_criteria)}, got {self.channel_criterion!r}")
        _check(self.channel_groups in CHANNEL_GROUPS,
               f"channel_groups must be one of {', '.join(CHANNEL_GROUPS)}, got {self.channel_groups!r}")
        _fraction("ffn", self.ffn)
        _check(0 <= self.layers <= 1000, f"layers must be >= 0, got {self.layers}")
        criteria, methods = criterion_names("heads"), criterion_names("layers")
        _check(self.criterion in criteria, f"criterion must be one of {', '.join(criteria)}, got {self.criterion!r}")
        _check(self.layer_method in methods,
               f"layer_method must be one of {', '.join(methods)}, got {self.layer_method!r}")
        _check(self.scope in SCOPES, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        _check(self.min_heads_per_layer >= 0, f"min_heads_per_layer must be >= 0, got {self.min_heads_per_layer}")
        _check(self.round_ffn_to >= 1, f"round_ffn_to must be >= 1, got {self.round_ffn_to}")
        _check(self.score_batches >= 1, f"score_batches must be >= 1, got {self.score_batches}")
        for value in self.sweep:
            _check(isinstance(value, (int, float)) and not isinstance(value, bool),
                   f"sweep must be a list of fractions in [0, 1), got {value!r}")
            _fraction("sweep", value)
        self.sweep = sorted(float(v) for v in self.sweep)
        _check(self.budget_samples >= 1, f"budget_samples must be >= 1, got {self.budget_samples}")
        if self.budget is not None:
            from ...budget.api import _check_budget

            keys = sorted(set(self.budget) - {"flops", "params", "latency"})
            _check(not keys, f"budget: unknown key {keys[0] if keys else ''!r} (known: flops, params, latency)")
            try:
                _check_budget(**{k: self.budget.get(k) for k in ("flops", "params", "latency")})
            except ValueError as err:
                raise ValueError(f"budget: {str(err).replace('prune_to_budget: ', '')}") from None
            _check(not (self.heads or self.ffn or self.layers or self.sweep),
                   "budget excludes heads / ffn / layers / sweep (the search chooses the heads and neurons)")
            self.budget = {k: float(v) for k, v in self.budget.items()}


@dataclass
class EvalConfig:
    """Evaluation and the latency measurement."""

    batch_size: int = _f(64, "examples per evaluation batch")
    latency_batch_size: int = _f(8, "batch size of the CPU latency measurement")
    latency_seq_len: int = _f(128, "sequence length of the latency measurement (also used for the FLOPs count)")
    latency_repeats: int = _f(3, "timed forward passes per model and round (2 alternating rounds; the "
                                        "median of a round, the faster round is reported)")

    def __post_init__(self):
        _check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        _check(self.latency_batch_size >= 1, f"latency_batch_size must be >= 1, got {self.latency_batch_size}")
        _check(1 <= self.latency_seq_len <= 8192, f"latency_seq_len must be in [1, 8192], got {self.latency_seq_len}")
        _check(1 <= self.latency_repeats <= 1000, f"latency_repeats must be in [1, 1000], got {self.latency_repeats}")


EXPORTS = (None, "compressed-tensors")  # serving formats written beside the pruned model


@dataclass
class OutputConfig:
    """Where the results go."""

    dir: str = _f("", "output folder (written to a temporary folder next to it, then moved into place)")
    push_to_hub: str | None = _f(None, "also upload the output folder to this Hub repo (token from HF_TOKEN)")
    private: bool = _f(False, "create the Hub repo as private")
    plots: bool = _f(True, "write the PNG plots")
    export: str | None = _f(None, "also write the model in a serving format: 'compressed-tensors' (int8/int4 "
                                  "weights in the subfolder compressed-tensors/, needs pip install 'hfprune[serve]')")
    bits: int = _f(8, "weight bits of the compressed-tensors export: 8 or 4")
    group_size: int | None = _f(None, "compressed-tensors export: one scale per this many input columns (e.g. 128); "
                                      "none: one per output channel")

    def __post_init__(self):
        _check(bool(str(self.dir).strip()), "dir is required (the output folder)")
        _check(self.export in EXPORTS, f"export must be one of {[e for e in EXPORTS if e]} (or unset), "
                                       f"got {self.export!r}")
        _check(not isinstance(self.bits, bool) and self.bits in (4, 8), f"bits must be 8 or 4, got {self.bits!r}")
        _check(self.group_size is None or (isinstance(self.group_size, int) and not isinstance(self.group_size, bool)
                                           and self.group_size > 0),
               f"group_size must be a positive integer or unset, got {self.group_size!r}")
        _check(self.push_to_hub is None or "/" in str(self.push_to_hub),
               f"push_to_hub must be a repo id like 'user/name', got {self.push_to_hub!r}")


@dataclass
class Recipe:
    """A whole pruning run: optional fine-tune -> score -> select -> prune -> optional recovery -> evaluate -> save.

    Example:
        ```python
        >>> recipe = load_recipe("recipes/sst2.yaml", overrides=["output.dir=out/sst2", "prune.heads=0.3"])
        >>> recipe.prune.heads
        0.3
        ```
    """

    model: ModelConfig = field(metadata={"help": "the model to prune"})
    data: DataConfig = field(metadata={"help": "the task and where its examples come from"})
    output: OutputConfig = field(metadata={"help": "where the results go"})
    finetune: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "fine-tune before pruning"})
    prune: PruneConfig = field(default_factory=PruneConfig, metadata={"help": "what to remove"})
    recover: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "recovery fine-tune after pruning"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation and latency"})
    seed: int = _f(0, "seed of the data subset, the new classification head and training")
    description: str = _f("", "free text, copied into the report")

    def __post_init__(self):
        _check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        image = self.data.task == IMAGE_TASK
        units = ("heads", "ffn", "layers", "budget") if image else ("channels", "channel_compensate")
        given = [u for u in units if getattr(self.prune, u)]
        _check(not given, f"prune.{given[0] if given else ''} does not apply to task {self.data.task}: "
                          + ("a CNN is pruned by prune.channels" if image else "channels are for image-classification"))
        nothing = not (self.prune.heads or self.prune.ffn or self.prune.layers or self.prune.channels
                       or self.prune.budget)
        _check(not (nothing and self.recover.steps), "recover.steps > 0 but nothing is pruned "
                                                     "(set prune.heads, prune.ffn, prune.layers or prune.budget)")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "finetune": TrainConfig, "prune": PruneConfig,
            "recover": TrainConfig, "eval": EvalConfig, "output": OutputConfig}
