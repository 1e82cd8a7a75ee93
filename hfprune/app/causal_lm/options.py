"""The options of a causal-LM run (decoder LLMs, calibration text, perplexity): the dataclasses that a YAML recipe
(`hfprune run`) and the `hfprune prune --task causal-lm` flags both spell."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from ...criteria import criterion_names
from ...recovery.kd import CAUSAL_LM_DISTILL, distill_options
from ...recovery.lora import check_rank, require_peft
from ..common.options import ModelConfig, OutputConfig, check, check_at_least, description_option, option, seed_option
from ..common.recipe import sections
from .harness import check_include, require_lm_eval, task_names

CAUSAL_LM_TASK = "causal-lm"


def check_model_source(name: str, gguf_file: str | None) -> None:
    """GGUF mistakes, found before anything loads: `--model` naming the .gguf file itself, a folder holding only GGUF
    weights without `--gguf-file`, a `--gguf-file` that is not in the folder. Each message names the .gguf files."""
    path = Path(name)
    if path.is_file() and path.suffix.lower() == ".gguf":
        check(False, f"name_or_path {name!r} is a GGUF file: pass its folder as --model {str(path.parent)!r} and "
                     f"the file name as --gguf-file {path.name!r}")
    if not path.is_dir():
        return
    found = sorted(p.name for p in path.glob("*.gguf"))
    listed = ", ".join(found) or "none"
    if gguf_file is not None:
        check((path / gguf_file).is_file(), f"gguf_file {gguf_file!r} is not in {name} (--gguf-file takes a file "
                                            f"name inside --model); the .gguf files there: {listed}")
    elif found and not (path / "config.json").is_file():
        check(False, f"name_or_path {name} holds GGUF weights and no config.json: pass --gguf-file with one of "
                     f"{listed}")


@dataclass
class LMModel(ModelConfig):
    """The decoder to prune: a folder, a Hub id, or a GGUF file in a folder."""

    gguf_file: str | None = option(None, "load the model from this GGUF file inside model.name_or_path (weights "
                                         "dequantized)", "--gguf-file", metavar="NAME")

    def __post_init__(self):
        super().__post_init__()
        check_model_source(self.name_or_path, self.gguf_file)


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
    """What to remove: whole layers, heads / FFN neurons, MoE experts, or weights (unstructured or N:M)."""

    layers: int | None = option(None, "remove this many layers, chosen by layer_method", "--layers", metavar="N")
    layer_method: str = option("block_influence", "layer importance method: "
                               + ", ".join(criterion_names("layers")) + " (angular: a contiguous block)",
                               "--layer-method", choices=lambda: criterion_names("layers"))
    hidden: float | None = option(None, "fraction of hidden (residual-stream) channels to remove; the kept width is "
                                        "rounded to a multiple of 8 and of the kept head count", "--hidden",
                                  metavar="R")
    heads: float | None = option(None, "fraction of attention heads to remove", "--heads", metavar="R")
    ffn: float | None = option(None, "fraction of FFN neurons to remove", "--ffn", metavar="R")
    experts: float | None = option(None, "fraction of the experts of every MoE layer to remove (mixture-of-experts "
                                         "models; the same count in every layer, at least num_experts_per_tok kept)",
                                   "--experts", metavar="R")
    criterion: str | None = option(None, "heads / FFN: a head / neuron criterion of the registry (default activation, "
                                         "Minitron, no labels); experts: an expert criterion (default reap); "
                                         "sparsity: a weight criterion (default wanda)",
                                   "--criterion",
                                   choices=lambda: tuple(dict.fromkeys(criterion_names("heads")
                                                                       + criterion_names("experts")
                                                                       + criterion_names("weights"))))
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
        for name in ("hidden", "heads", "ffn", "experts", "sparsity"):
            value = getattr(self, name)
            check(value is None or 0.0 < value < 1.0, f"{name} must be a fraction in (0, 1), got {value!r}")
        methods = criterion_names("layers")
        check(self.layer_method in methods, f"layer_method must be one of {methods}, got {self.layer_method!r}")
        if self.pattern is not None:
            match = re.fullmatch(r"(\d+):(\d+)", self.pattern)
            check(match is not None, f"pattern must look like N:M (--pattern, e.g. 2:4), got {self.pattern!r}")
            check(0 < int(match[1]) < int(match[2]), f"pattern {self.pattern!r} keeps N of every M weights and needs "
                  "0 < N < M (--pattern, e.g. 2:4)")
            check(self.sparsity is None, "pattern N:M fixes the sparsity; drop sparsity")

    @property
    def structured(self) -> bool:
        return any(getattr(self, name) is not None for name in ("layers", "hidden", "heads", "ffn", "experts"))

    @property
    def weights(self) -> bool:
        return self.sparsity is not None or self.pattern is not None


@dataclass
class LMRecover:
    """Recovery after pruning: a few training steps on windows of the text file that calibration did not use, with
    the LM loss or by distillation from the model before pruning, on all weights or through merged LoRA adapters."""

    steps: int = option(0, "recovery steps after pruning (token budget: steps x batch_size x seq_len)",
                        "--{section}-steps", metavar="N")
    learning_rate: float = option(5e-5, "AdamW learning rate of the recovery (constant)", "--learning-rate",
                                  metavar="LR")
    distill: dict | None = option(None, "recover by logit distillation from the model before pruning (or teacher): "
                                        "{alpha, temperature, hidden_weight}, causal-LM defaults alpha 1 (KL only), "
                                        "temperature 1 (hfprune.DistillationTrainer; --distill: the defaults)",
                                  "--distill", action="store_true", to_value=lambda given: {} if given else None)
    distill_hidden: float | None = option(None, "with distill: weight of the hidden-state MSE term (implies distill)",
                                          "--distill-hidden", metavar="W")
    teacher: str | None = option(None, "with distill: the teacher model (folder or Hub id; default: the model before "
                                       "pruning); its vocabulary must match", "--teacher", metavar="PATH")
    lora: int | None = option(None, "recover through LoRA adapters of this rank on every projection (peft), merged "
                                    "into the weights before saving", "--lora", metavar="R")

    def __post_init__(self):
        check(self.steps >= 0, f"steps must be >= 0, got {self.steps}")
        check(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")
        if self.distill_hidden is not None:
            self.distill = {**(self.distill or {}), "hidden_weight": self.distill_hidden}
        if self.distill is not None:
            try:
                self.distill = distill_options({**CAUSAL_LM_DISTILL, **self.distill})
            except ValueError as err:
                raise ValueError(str(err).replace("distill: ", "", 1).replace("DistillationTrainer: ",
                                                                                "distill.")) from None
        check(self.teacher is None or self.distill is not None, "teacher is only used with distill (--distill)")
        if self.lora is not None:
            check_rank(self.lora, "recover.lora")
            require_peft("recover.lora")
        check(self.steps > 0 or (self.distill is None and self.lora is None),
              "distill / lora set how the recovery trains: give steps too (--recover-steps N)")


@dataclass
class LMEvaluate:
    """lm-evaluation-harness tasks run on the model before pruning and on the final model."""

    lm_eval_tasks: str | None = option(None, "also run these lm-evaluation-harness tasks (comma-separated) on the "
                                             "dense and the final model (needs `pip install lm-eval`)",
                                       "--lm-eval-tasks", metavar="TASK,...")
    lm_eval_include: str | None = option(None, "a folder of local lm-eval task YAMLs (lm-eval's include_path)",
                                         "--lm-eval-include", metavar="DIR")
    lm_eval_limit: int | None = option(None, "at most this many examples per lm-eval task", "--lm-eval-limit",
                                       metavar="N")

    def __post_init__(self):
        check_at_least("lm_eval_limit", self.lm_eval_limit)
        check(self.lm_eval_tasks is not None or self.lm_eval_include is None,
              "lm_eval_include names where local tasks are: give lm_eval_tasks too (--lm-eval-tasks)")
        if self.lm_eval_tasks is not None:
            task_names(self.lm_eval_tasks, "lm_eval_tasks")
            check_include(self.lm_eval_include, "lm_eval_include")
            require_lm_eval("lm_eval_tasks")

    @property
    def tasks(self) -> list[str]:
        return task_names(self.lm_eval_tasks) if self.lm_eval_tasks is not None else []


@dataclass
class CausalLMRecipe:
    """A whole causal-LM run: load -> calibration windows -> perplexity -> prune -> optional recovery -> perplexity
    -> save."""

    model: LMModel = field(metadata={"help": "the decoder to prune"})
    data: LMData = field(metadata={"help": "calibration and evaluation text"})
    output: OutputConfig = field(metadata={"help": "where the results go"})
    prune: LMPrune = field(default_factory=LMPrune, metadata={"help": "what to remove"})
    recover: LMRecover = field(default_factory=LMRecover, metadata={"help": "recovery after pruning (LM loss or "
                                                                                "distillation, optionally LoRA)"})
    evaluate: LMEvaluate = field(default_factory=LMEvaluate, metadata={"help": "lm-evaluation-harness tasks"})
    seed: int = seed_option()
    description: str = description_option()

    def __post_init__(self):
        check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        prune = self.prune
        check(prune.structured or prune.weights,
              "prune: nothing to prune: give layers, heads / ffn, experts, or sparsity / pattern")
        check(not (prune.structured and prune.weights), "prune: give either structured pruning (layers / heads / "
              "ffn / experts) or weight sparsity (sparsity / pattern), not both in one run")
        if prune.experts is not None:
            check(prune.heads is None and prune.ffn is None and prune.hidden is None, "prune: experts and heads / "
                  "ffn / hidden read different criteria; give experts (optionally with layers) or the others")
            names = criterion_names("experts")
            prune.criterion = prune.criterion or "reap"
            check(prune.criterion in names,
                  f"prune.criterion for experts must be one of {names}, got {prune.criterion!r}")
        elif prune.weights:
            names = criterion_names("weights")
            prune.criterion = prune.criterion or ("wanda" if "wanda" in names else "magnitude")
            check(prune.criterion in names,
                  f"prune.criterion for sparsity must be one of {names}, got {prune.criterion!r}")
            m = int(prune.pattern.split(":")[1]) if prune.pattern else 0
            # SparseGPT updates 128 columns at a time (its blocksize), which must hold whole groups of M.
            check(prune.criterion != "sparsegpt" or not m or 128 % m == 0, f"prune.pattern {prune.pattern}: with "
                  f"criterion sparsegpt, M={m} must divide 128 (--pattern, e.g. 2:4 or 4:8)")
        else:
            names = criterion_names("heads")
            prune.criterion = prune.criterion or "activation"
            check(prune.criterion in names,
                  f"prune.criterion for heads / ffn must be one of {names}, got {prune.criterion!r}")
            if prune.hidden is not None:
                names = criterion_names("hidden")
                check(prune.criterion in names,
                      f"prune.criterion for hidden must be one of {names}, got {prune.criterion!r}")
                check(self.recover.distill is None or self.recover.distill["hidden_weight"] == 0,
                      "recover.distill_hidden compares hidden states of equal width: not with prune.hidden")


SECTIONS = sections(CausalLMRecipe)
