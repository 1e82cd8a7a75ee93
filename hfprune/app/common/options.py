"""What every application's options are made of: the field helper, range checks, and the sections that mean the same
in every task (the model, a training stage, the evaluation, the output).

An application's options are one dataclass of sections (each a dataclass) plus top-level scalars (`seed`,
`description`). Every field carries its help text, and where it has one its command-line flag, in its metadata:
`hfprune prune` builds its flags from these fields and `hfprune run` reads the same fields from YAML, so the two are
spellings of the same objects. A flag may hold `{section}` (`--{section}-steps` is `--finetune-steps` in the
`finetune` section and `--recover-steps` in `recover`). Values are checked in `__post_init__`; messages start with the
field name (the loader prefixes the section: `prune.heads must be ...`).
"""

from __future__ import annotations

from dataclasses import dataclass, field


def option(default, help: str, flag: str | None = None, **cli):
    """A dataclass field with its help text and, optionally, its command-line flag and argparse settings (`metavar`,
    `choices` (a tuple or a function returning one), `type` for values that are not a plain scalar, `action`,
    `to_value` (flag value -> field value)."""
    metadata = {"help": help, "flag": flag, "cli": cli}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ValueError(message)


def check_fraction(name: str, value: float) -> None:
    check(0.0 <= value < 1.0, f"{name} must be a fraction in [0, 1), got {value!r}")


def check_at_least(name: str, value, low: int = 1) -> None:
    """`value` is None or an int >= `low`."""
    check(value is None or (isinstance(value, int) and not isinstance(value, bool) and value >= low),
          f"{name} must be >= {low}, got {value!r}")


@dataclass
class ModelConfig:
    """The model to prune."""

    name_or_path: str = option("", "checkpoint to start from: a local folder or a Hub id (safetensors weights)",
                               "--model", metavar="PATH_OR_ID")

    def __post_init__(self):
        check(bool(str(self.name_or_path).strip()), "name_or_path is required (a folder or a Hub id)")


@dataclass
class TrainConfig:
    """One `transformers.Trainer` stage (the fine-tune before pruning, or the recovery after it)."""

    steps: int = option(0, "optimizer steps (0 skips the stage)", "--{section}-steps", metavar="N")
    batch_size: int = option(32, "examples per step", "--batch-size", metavar="N")
    learning_rate: float = option(5e-5, "peak AdamW learning rate (linear decay)", "--learning-rate", metavar="LR")
    weight_decay: float = option(0.0, "AdamW weight decay")
    warmup_ratio: float = option(0.0, "fraction of the steps spent warming the learning rate up")

    def __post_init__(self):
        check(0 <= self.steps <= 10_000_000, f"steps must be >= 0, got {self.steps}")
        check(1 <= self.batch_size <= 65536, f"batch_size must be >= 1, got {self.batch_size}")
        check(0 < self.learning_rate < 1, f"learning_rate must be in (0, 1), got {self.learning_rate}")
        check(0 <= self.weight_decay < 1, f"weight_decay must be in [0, 1), got {self.weight_decay}")
        check_fraction("warmup_ratio", self.warmup_ratio)


@dataclass
class EvalConfig:
    """Evaluation and the latency measurement."""

    batch_size: int = option(64, "examples per evaluation batch")
    latency_batch_size: int = option(8, "batch size of the CPU latency measurement")
    latency_repeats: int = option(3, "timed forward passes per model and round (2 alternating rounds; the median of "
                                     "a round, the faster round is reported)")

    def __post_init__(self):
        check(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        check(self.latency_batch_size >= 1, f"latency_batch_size must be >= 1, got {self.latency_batch_size}")
        check(1 <= self.latency_repeats <= 1000, f"latency_repeats must be in [1, 1000], got {self.latency_repeats}")


@dataclass
class OutputConfig:
    """Where the results go."""

    dir: str = option("", "output folder (written to a temporary folder next to it, then moved into place)",
                      "--output", metavar="OUT")
    plots: bool = option(True, "write the PNG plots")

    def __post_init__(self):
        check(bool(str(self.dir).strip()), "dir is required (the output folder)")


@dataclass
class PublishedOutput(OutputConfig):
    """Where the results go, and the Hub repo they may be uploaded to."""

    push_to_hub: str | None = option(None, "also upload the output folder to this Hub repo (token from HF_TOKEN)",
                                     "--push-to-hub", metavar="REPO")
    private: bool = option(False, "create the Hub repo as private")

    def __post_init__(self):
        super().__post_init__()
        check(self.push_to_hub is None or "/" in str(self.push_to_hub),
              f"push_to_hub must be a repo id like 'user/name', got {self.push_to_hub!r}")


def seed_option():
    return option(0, "seed of the data subset, the new classification head and training", "--seed")


def description_option():
    return option("", "free text, copied into the report")
