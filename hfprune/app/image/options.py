"""The options of an image-classification run (CNN channel pruning): the dataclasses that a YAML recipe
(`hfprune run`) and the `hfprune prune --task image-classification` flags both spell."""

from __future__ import annotations

from dataclasses import dataclass, field

from ...criteria import criterion_names
from ...ranking import SCOPES
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

IMAGE_TASK = "image-classification"
CHANNEL_GROUPS = ("inner", "all", "coupled")


@dataclass
class ImageData:
    """Where the images come from: exactly one of an imagefolder, a `datasets` dataset or .npz arrays."""

    task: str = option(IMAGE_TASK, f"{IMAGE_TASK} (a CNN; channels are pruned)", "--task", metavar="TASK")
    data_dir: str | None = option(None, "an imagefolder (train/ and validation/ of class folders)", "--data-dir",
                                  metavar="DIR")
    train_file: str | None = option(None, "a .npz file with 'images' and 'labels' arrays", "--train-file",
                                    metavar="FILE")
    validation_file: str | None = option(None, "the validation .npz file", "--validation-file", metavar="FILE")
    dataset: str | None = option(None, "a `datasets` image dataset (Hub name or a save_to_disk folder) with train "
                                       "and validation/test splits, an image column and a label column", "--dataset",
                                 metavar="NAME_OR_DIR")
    image_size: int | None = option(None, "resize images to this square size (default: the model config's "
                                          "image_size, else the images' own size)", "--image-size", metavar="PX")
    max_train_samples: int | None = option(None, "use a seeded random subset of this many training images",
                                           "--max-train-samples", metavar="N")
    max_eval_samples: int | None = option(None, "evaluate on the first this-many validation images",
                                          "--max-eval-samples", metavar="N")

    def __post_init__(self):
        check(self.task == IMAGE_TASK, f"task must be {IMAGE_TASK}, got {self.task!r}")
        sources = [n for n in ("data_dir", "dataset", "train_file") if getattr(self, n)]
        check(len(sources) == 1, f"{IMAGE_TASK} needs exactly one of data_dir (imagefolder), dataset or "
                                 f"train_file (.npz), got {sources or 'none'}")
        check(not self.train_file or bool(self.validation_file), "train_file (.npz) needs a validation_file (.npz) too")
        check(self.image_size is None or 8 <= self.image_size <= 4096,
              f"image_size must be in [8, 4096], got {self.image_size}")
        check_at_least("max_train_samples", self.max_train_samples)
        check_at_least("max_eval_samples", self.max_eval_samples)


@dataclass
class ImagePrune:
    """Which CNN channels to remove and how to score them."""

    channels: float = option(0.0, "fraction of the CNN's channels (of channel_groups) to remove", "--channels",
                             metavar="R")
    channel_criterion: str = option("l1", "CNN channel criterion: " + ", ".join(criterion_names("channels")),
                                    "--channel-criterion", choices=lambda: criterion_names("channels"))
    channel_groups: str = option("inner", "CNN channel groups scored: inner (free), all prunable, or coupled",
                                 "--channel-groups", choices=CHANNEL_GROUPS)
    channel_compensate: bool = option(False, "fold the removed channels' mean contribution (measured on the score "
                                             "batches) into the next layers' biases / BatchNorm means before removal "
                                             "(hfprune.channel_compensation)", "--compensate", action="store_true")
    scope: str = option("global", "rank channels over the whole model (global) or within each group (layer)",
                        "--scope", choices=SCOPES)
    score_batches: int = option(32, "training batches used to score importance", "--score-batches", metavar="N")

    def __post_init__(self):
        check_fraction("channels", self.channels)
        criteria = criterion_names("channels")
        check(self.channel_criterion in criteria,
              f"channel_criterion must be one of {', '.join(criteria)}, got {self.channel_criterion!r}")
        check(self.channel_groups in CHANNEL_GROUPS,
              f"channel_groups must be one of {', '.join(CHANNEL_GROUPS)}, got {self.channel_groups!r}")
        check(self.scope in SCOPES, f"scope must be one of {', '.join(SCOPES)}, got {self.scope!r}")
        check(self.score_batches >= 1, f"score_batches must be >= 1, got {self.score_batches}")


@dataclass
class ImageRecipe:
    """A whole image-classification run: optional fine-tune -> score channels -> select -> prune -> optional recovery
    -> evaluate -> latency -> save."""

    model: ModelConfig = field(metadata={"help": "the CNN to prune"})
    data: ImageData = field(metadata={"help": "where the images come from"})
    output: PublishedOutput = field(metadata={"help": "where the results go"})
    finetune: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "fine-tune before pruning"})
    prune: ImagePrune = field(default_factory=ImagePrune, metadata={"help": "what to remove"})
    recover: TrainConfig = field(default_factory=TrainConfig, metadata={"help": "recovery fine-tune after pruning"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "evaluation and latency"})
    seed: int = seed_option()
    description: str = description_option()

    def __post_init__(self):
        check(0 <= self.seed < 2**32, f"seed must be in [0, 2**32), got {self.seed}")
        check(not (not self.prune.channels and self.recover.steps),
              "recover.steps > 0 but nothing is pruned (set prune.channels)")


SECTIONS = sections(ImageRecipe)
