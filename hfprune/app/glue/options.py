"""The options of a GLUE run: the dataclasses that a YAML recipe (`hfprune run`) and the `hfprune prune` flags both
spell (see `hfprune.app.common.options`)."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field

from ...budget.api import _check_budget
from ...criteria import criterion_names
from ...ranking import SCOPES
from ...recovery.kd import distill_options
from ..common.options import (
    EvalConfig,
    ModelConfig,
    PublishedOutput,
    TrainConfig,
    check,
    check_at_least,
    check_fraction,
    description_option,
    option,
    seed_option,
)
from ..common.recipe import sections
from .tasks import GLUE_TASKS, get_task

EXPORTS = (None, "compressed-tensors")  # serving formats written beside the pruned model


def fractions(text: str) -> list[float]:
    """`"0.25,0.5"` -> `[0.25, 0.5]` (argparse names this function in its error for a bad value)."""
    return [float(v) for v in text.split(",") if v.strip()]


def budget(text: str) -> dict:
    """`"flops=0.6"` -> `{"flops": 0.6}` (also params=, latency=)."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or key not in ("flops", "params", "latency"):
        raise argparse.ArgumentTypeError(f"expected flops=F, params=F or latency=F, got {text!r}")
    try:
        return {key: float(value)}
    except ValueError:
        raise argparse.ArgumentTypeError(f"{key}= needs a number, got {value!r}") from None


@dataclass
class GlueModel(ModelConfig):
    """The model to prune, and how its inputs are cut."""

    max_length: int = option(128, "maximum tokens per example (longer inputs are truncated)", "--max-length",
                             metavar="N")

    def __post_init__(self):
        super().__post_init__()
        check(8 <= self.max_length <= 8192, f"max_length must be in [8, 8192], got {self.max_length}")


@dataclass
class GlueData:
    """Where the task's examples come from."""

    task: str = option("", f"GLUE task: {', '.join(GLUE_TASKS)}", "--task", metavar="TASK")
    data_dir: str | None = option(None, "folder in the original GLUE layout (SST-2/train.tsv ...); default: the Hub",
                                  "--data-dir", metavar="DIR")
    train_file: str | None = option(None, "CSV/TSV/JSON training file with the task's columns and a label column",
                                    "--train-file", metavar="FILE")
    validation_file: str | None = option(None, "CSV/TSV/JSON validation file, same columns", "--validation-file",
                                         metavar="FILE")
    max_train_samples: int | None = option(None, "use a seeded random subset of this many training examples",
                                           "--max-train-samples", metavar="N")
    max_eval_samples: int | None = option(None, "evaluate on the first this-many validation examples",
                                          "--max-eval-samples", metavar="N")

    def __post_init__(self):
        try:
            self.task = get_task(self.task).name
        except ValueError as err:  # the loader prefixes the section: "data.task: unknown task ..."
            raise ValueError(f"task: {err}") from None
        check(not (self.data_dir and (self.train_file or self.validation_file)),
              "data_dir and train_file/validation_file exclude each other")
        check_at_least("max_train_samples", self.max_train_samples)
        check_at_least("max_eval_samples", self.max_eval_samples)


@dataclass
class GlueTrain(TrainConfig):
    """A `transformers.Trainer` stage of a GLUE run (with LayerDrop)."""

    layerdrop: float = option(0.0, "LayerDrop probability: skip each layer at random during this stage "
                                   "(Fan et al., 2019), so that whole layers can be removed afterwards")
    layerdrop_mode: str = option("uniform", "which layers LayerDrop may skip: uniform (any) or every_other")

    def __post_init__(self):
        super().__post_init__()
        check_fraction("layerdrop", self.layerdrop)
        check(self.layerdrop_mode in ("uniform", "every_other"),
              f"layerdrop_mode must be uniform or every_other, got {self.layerdrop_mode!r}")


@dataclass
class GlueRecover(GlueTrain):
    """The recovery stage after pruning: fine-tuning, or distillation from the model before pruning."""

    distill: dict | None = option(None, "recover by distillation from the model before pruning: {alpha, "
                                        "temperature, hidden_weight} (hfprune.DistillationTrainer; {} for the "
                                        "defaults; --distill: the defaults)", "--distill", action="store_true",
                                  to_value=lambda given: {} if given else None)

    def __post_init__(self):
        super().__post_init__()
        if self.distill is not None:
            try:
                self.distill = distill_options(self.distill)
            except ValueError as err:
                raise ValueError(str(err).replace("distill: ", "", 1).replace("DistillationTrainer: ",
                                                                                "distill.")) from None


def _check_budget_option(values: dict) -> dict:
    keys = sorted(set(values) - {"flops", "params", "latency"})
    check(not keys, f"budget: unknown key {keys[0] if keys else ''!r} (known: flops, params, latency)")
    try:
        _check_budget(**{k: values.get(k) for k in ("flops", "params", "latency")})
    except ValueError as err:
        raise ValueError(f"budget: {str(err).replace('prune_to_budget: ', '')}") from None
    return {k: float(v) for k, v in values.items()}


@dataclass
class GluePrune:
    """What to remove from a transformer and how to score it."""

    heads: float = option(0.0, "fraction of attention heads to remove", "--heads", metavar="R")
    ffn: float = option(0.0, "fraction of FFN neurons to remove", "--ffn", metavar="R")
    layers: int = option(0, "number of whole layers to remove", "--layers", metavar="N")
    criterion: str = option("michel", "head/neuron importance criterion: " + ", ".join(criterion_names("heads"))
                            + " (for neurons: the same name when registered for neurons, otherwise taylor)",
                            "--criterion", choices=lambda: criterion_names("heads"))
    layer_method: str = option("ablation", f"layer importance method: {', '.join(criterion_names('layers'))}",
                               "--layer-method", choices=lambda: criterion_names("layers"))
    scope: str = option("global", "rank heads and neurons over the whole model (global) or within each layer "
                                  "(layer)", "--scope", choices=SCOPES)
    min_heads_per_layer: int = option(1, "never remove the last this-many heads of a layer")
    round_ffn_to: int = option(1, "keep a multiple of this many FFN neurons per layer (8 or 64 suit fast kernels)")
    score_batches: int = option(32, "training batches used to score importance", "--score-batches", metavar="N")
    sweep: list = option([], "also evaluate the masked model at these head fractions (metric-vs-fraction plot)",
                         "--sweep", type=fractions, metavar="R,R,...")
    budget: dict | None = option(None, "prune to a fraction of the dense FLOPs / params / latency instead of ratios "
                                       "(Kwon et al., 2022, no retraining): one of {flops: F}, {params: F}, "
                                       "{latency: F}; on the command line flops=0.6", "--budget", type=budget,
                                 metavar="METRIC=F")
    budget_samples: int = option(2048, "training samples read by the budget search (Fisher and mask tuning)",
                                 "--budget-samples", metavar="N")
    budget_tune: bool = option(True, "budget search: solve and fold the least-squares mask scales")

    def __post_init__(self):
        check_fraction("heads", self.heads)
        check_fraction("ffn", self.ffn)
        check(0 <= self.layers <= 1000, f"layers must be >= 0, got {self.layers}")
        criteria, methods = criterion_names("heads"), criterion_names("layers")
        check(self.criterion in criteria, f"criterion must be one of {', '.join(criteria)}, got {self.criterion!r}")
        check(self.layer_method in methods,
              f"layer_method must be one of {', '.join(methods)}, got {self.layer_method!r}")
        check(self.scope in SCOPES, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        check(self.min_heads_per_layer >= 0, f"min_heads_per_layer must be >= 0, got {self.min_heads_per_layer}")
        check(self.round_ffn_to >= 1, f"round_ffn_to must be >= 1, got {self.round_ffn_to}")
        check(self.score_batches >= 1, f"score_batches must be >= 1, got {self.score_batches}")
        for value in self.sweep:
            check(isinstance(value, (int, float)) and not isinstance(value, bool),
                  f"sweep must be a list of fractions in [0, 1), got {value!r}")
            check_fraction("sweep", value)
        self.sweep = sorted(float(v) for v in self.sweep)
        check(self.budget_samples >= 1, f"budget_samples must be >= 1, got {self.budget_samples}")
        if self.budget is not None:
            self.budget = _check_budget_option(self.budget)
            check(not (self.heads or self.ffn or self.layers or self.sweep),
                  "budget excludes heads / ffn / layers / sweep (the search chooses the heads and neurons)")


@dataclass
class GlueEval(EvalConfig):
    """Evaluation and the latency measurement (also the FLOPs count's sequence length)."""

    latency_seq_len: int = option(128, "sequence length of the latency measurement (also used for the FLOPs count)")

    def __post_init__(self):
        super().__post_init__()
        check(1 <= self.latency_seq_len <= 8192, f"latency_seq_len must be in [1, 8192], got {self.latency_seq_len}")


@dataclass
class GlueOutput(PublishedOutput):
    """Where the results go, and an optional serving export."""

    export: str | None = option(None, "also write the model in a serving format: 'compressed-tensors' (int8/int4 "
                                      "weights in the subfolder compressed-tensors/, needs pip install "
                                      "'hfprune[serve]')", "--export", choices=tuple(e for e in EXPORTS if e))
    bits: int = option(8, "weight bits of the compressed-tensors export: 8 or 4", "--bits", choices=(8, 4))
    group_size: int | None = option(None, "compressed-tensors export: one scale per this many input columns (e.g. "
                                          "128); none: one per output channel", "--group-size", metavar="N")

    def __post_init__(self):
        super().__post_init__()
        check(self.export in EXPORTS, f"export must be one of {[e for e in EXPORTS if e]} (or unset), "
                                      f"got {self.export!r}")
        check(not isinstance(self.bits, bool) and self.bits in (4, 8), f"bits must be 8 or 4, got {self.bits!r}")
        check(self.group_size is None or (isinstance(self.group_size, int) and not isinstance(self.group_size, bool)
                                          and self.group_size > 0),
              f"group_size must be a positive integer or unset, got {self.group_size!r}")


@dataclass
class GlueRecipe:
    """A whole GLUE run: optional fine-tune -> score -> select -> prune -> optional recovery -> evaluate -> save.

    Example:
        ```python
        >>> recipe = load_recipe("recipes/sst2.yaml", overrides=["output.dir=out/sst2", "prune.heads=0.3"])
        >>> recipe.prune.heads
        0.3
        ```
    """

    model: GlueModel = field(metadata={"help": "the model to prune"})
    data: GlueData = field(metadata={"help": "the task and where its examples come from"})
    output: GlueOutput = field(metadata={"help": "where the results go"})
    finetune: GlueTrain = field(default_factory=GlueTrain, metadata={"help": "fine-tune before pruning"})
    prune: GluePrune = field(default_factory=GluePrune, metadata={"help": "what to remove"})
    recover: GlueRecover = field(default_factory=GlueRecover, metadata={"help": "recovery fine-tune after pruning"})
    eval: GlueEval = field(default_factory=GlueEval, metadata={"help": "evaluation and latency"})
    seed: int = seed_option()
    description: str = description_option()

    def __post_init__(self):
        check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        nothing = not (self.prune.heads or self.prune.ffn or self.prune.layers or self.prune.budget)
        check(not (nothing and self.recover.steps), "recover.steps > 0 but nothing is pruned "
                                                    "(set prune.heads, prune.ffn, prune.layers or prune.budget)")


SECTIONS = sections(GlueRecipe)
