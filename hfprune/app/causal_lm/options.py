"""The options of a causal-LM run (decoder LLMs, calibration text, perplexity): the dataclasses that a YAML recipe
(`hfprune run`) and the `hfprune prune --task causal-lm` flags both spell."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...criteria import criterion_names
from ...selection.width import AXES
from ..common.options import ModelConfig, OutputConfig, check, check_at_least, description_option, option, seed_option
from ..common.recipe import sections

CAUSAL_LM_TASK = "causal-lm"


@dataclass
class LMModel(ModelConfig):
    """The decoder to prune: a folder, a Hub id, or a GGUF file in a folder."""

    gguf_file: str | None = option(None, "load the model from this GGUF file inside model.name_or_path (weights "
                                         "dequantized)", "--gguf-file", metavar="NAME")


@dataclass
class LMData:
    """The calibration text, the held-out text and how both are cut into windows."""

    task: str = option(CAUSAL_LM_TASK, f"{CAUSAL_LM_TASK} (a decoder LLM; calibration text, perplexity)", "--task",
                       metavar="TASK")
    text_file: str = option("", "UTF-8 calibration text; its last eval_fraction of lines are held out for perplexity "
                                "unless eval_text_file is given", "--text-file", metavar="FILE")
    eval_text_file: str | None = option(None, "held-out text for perplexity", "--eval-text-file", metavar="FILE")
    eval_fraction: float = option(0.1, "share of text_file lines held out when there is no eval_text_file")
    num_samples: int = option(64, "calibration windows", "--num-samples", metavar="N")
    seq_len: int = option(512, "tokens per calibration / evaluation window", "--seq-len", metavar="N")
    batch_size: int = option(4, "windows per batch (calibration and recovery)", "--batch-size", metavar="N")
    eval_samples: int = option(64, "at most this many consecutive held-out windows for perplexity", "--eval-samples",
                               metavar="N")

    def __post_init__(self):
        check(self.task == CAUSAL_LM_TASK, f"task must be {CAUSAL_LM_TASK}, got {self.task!r}")
        check(bool(str(self.text_file).strip()), "text_file is required (the calibration text, --text-file)")
        for name in ("text_file", "eval_text_file"):
            path = getattr(self, name)
            check(path is None or Path(path).is_file(), f"{name} {path!r} is not a file")
        for name in ("num_samples", "seq_len", "batch_size", "eval_samples"):
            value = getattr(self, name)
            check(isinstance(value, int) and not isinstance(value, bool) and value >= 1,
                  f"{name} must be a positive integer, got {value!r}")
        check(0.0 < self.eval_fraction < 1.0, f"eval_fraction must be in (0, 1), got {self.eval_fraction}")


@dataclass
class LMPrune:
    """What to remove: whole layers, heads / FFN neurons, or weights (unstructured or N:M)."""

    layers: int | None = option(None, "remove this many layers, chosen by layer_method", "--layers", metavar="N")
    layer_method: str = option("block_influence", "layer importance method: "
                               + ", ".join(criterion_names("layers")) + " (angular: a contiguous block)",
                               "--layer-method", choices=lambda: criterion_names("layers"))
    heads: float | None = option(None, "fraction of attention heads to remove", "--heads", metavar="R")
    ffn: float | None = option(None, "fraction of FFN neurons to remove", "--ffn", metavar="R")
    criterion: str | None = option(None, "heads / FFN: a head / neuron criterion of the registry (default activation, "
                                         "Minitron, no labels); sparsity: a weight criterion (default wanda)",
                                   "--criterion",
                                   choices=lambda: tuple(dict.fromkeys(criterion_names("heads")
                                                                       + criterion_names("weights"))))
    params: float | None = option(None, "keep this fraction of the parameters: select_width searches a uniform "
                                        "split over axes (with layers: also that many layers by block influence)",
                                  "--params", metavar="P")
    axes: str = option("hidden,heads,ffn", "with params: the axes that may shrink, comma-separated ("
                       + ", ".join(AXES) + ")", "--axes", metavar="A,B")
    uniform: bool = option(False, "the same heads / KV heads / FFN width in every layer (whole KV groups; a plain "
                                  "config)", "--uniform", action="store_true")
    round_to: int = option(64, "with uniform: kept FFN width a multiple of N", "--round-to", metavar="N")
    sparsity: float | None = option(None, "weight sparsity of the projections (e.g. 0.5 with --criterion wanda | "
                                          "sparsegpt)", "--sparsity", metavar="S")
    pattern: str | None = option(None, "N:M weight sparsity, e.g. 2:4 (fixes the sparsity at 1 - N/M)", "--pattern",
                                 metavar="N:M")

    def __post_init__(self):
        check_at_least("layers", self.layers)
        check_at_least("round_to", self.round_to)
        for name in ("heads", "ffn", "sparsity"):
            value = getattr(self, name)
            check(value is None or 0.0 < value < 1.0, f"{name} must be a fraction in (0, 1), got {value!r}")
        check(self.params is None or 0.0 < self.params < 1.0, f"params must be a fraction in (0, 1), got "
              f"{self.params!r}")
        axes = [a.strip() for a in str(self.axes).split(",")]
        check(all(a in AXES for a in axes), f"axes must be among {', '.join(AXES)}, got {self.axes!r}")
        check(self.params is None or (self.heads is None and self.ffn is None),
              "params searches the heads / FFN widths itself: drop heads / ffn")
        check(self.params is None or self.layers is None or self.layer_method == "block_influence",
              "params with layers chooses the layers by block influence: drop layer_method")
        methods = criterion_names("layers")
        check(self.layer_method in methods, f"layer_method must be one of {methods}, got {self.layer_method!r}")
        if self.pattern is not None:
            check(re.fullmatch(r"\d+:\d+", self.pattern) is not None,
                  f"pattern must look like N:M (e.g. 2:4), got {self.pattern!r}")
            check(self.sparsity is None, "pattern N:M fixes the sparsity; drop sparsity")

    @property
    def structured(self) -> bool:
        return self.layers is not None or self.heads is not None or self.ffn is not None or self.params is not None

    @property
    def weights(self) -> bool:
        return self.sparsity is not None or self.pattern is not None


@dataclass
class LMRecover:
    """A few steps of LM fine-tuning on calibration windows after pruning."""

    steps: int = option(0, "LM fine-tuning steps on calibration windows after pruning", "--{section}-steps",
                        metavar="N")
    learning_rate: float = option(5e-5, "AdamW learning rate of the recovery", "--learning-rate", metavar="LR")

    def __post_init__(self):
        check(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        check(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")


@dataclass
class CausalLMRecipe:
    """A whole causal-LM run: load -> calibration windows -> perplexity -> prune -> optional recovery -> perplexity
    -> save."""

    model: LMModel = field(metadata={"help": "the decoder to prune"})
    data: LMData = field(metadata={"help": "calibration and evaluation text"})
    output: OutputConfig = field(metadata={"help": "where the results go"})
    prune: LMPrune = field(default_factory=LMPrune, metadata={"help": "what to remove"})
    recover: LMRecover = field(default_factory=LMRecover, metadata={"help": "LM fine-tuning after pruning"})
    seed: int = seed_option()
    description: str = description_option()

    def __post_init__(self):
        check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        prune = self.prune
        check(prune.structured or prune.weights,
              "prune: nothing to prune: give layers, heads / ffn, params, or sparsity / pattern")
        check(not (prune.structured and prune.weights), "prune: give either structured pruning (layers / heads / "
              "ffn) or weight sparsity (sparsity / pattern), not both in one run")
        if prune.weights:
            names = criterion_names("weights")
            prune.criterion = prune.criterion or ("wanda" if "wanda" in names else "magnitude")
            check(prune.criterion in names,
                  f"prune.criterion for sparsity must be one of {names}, got {prune.criterion!r}")
        else:
            names = criterion_names("heads")
            prune.criterion = prune.criterion or "activation"
            check(prune.criterion in names,
                  f"prune.criterion for heads / ffn must be one of {names}, got {prune.criterion!r}")
            check(prune.params is None or prune.criterion == "activation",
                  f"prune.params scores by activation (Minitron), got criterion {prune.criterion!r}")


SECTIONS = sections(CausalLMRecipe)
