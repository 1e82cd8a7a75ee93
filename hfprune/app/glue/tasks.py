"""GLUE task specifications: columns, label names, metrics and the original TSV layout of each task.

Wang et al., "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding" (ICLR 2019).
Column names and label ids follow the `nyu-mll/glue` dataset on the Hugging Face Hub, so a model trained on the Hub
copy and one trained on the original TSV files agree on what label 0 means.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields sit in the original GLUE TSV files.

    Args:
        folder (`str`): the task's folder in the GLUE download (`SST-2`, `MNLI`, ...).
        splits (`dict[str, str]`): split name -> file name (`{"validation": "dev.tsv"}`).
        text (`tuple[str, ...]`): header names of the text fields, in the order of `TaskSpec.text_columns`.
        label (`str`): header name of the label field.
        header (`tuple[str, ...]`, *optional*): column names for a file that has no header line (CoLA).
    """

    folder: str
    splits: dict[str, str]
    text: tuple[str, ...]
    label: str
    header: tuple[str, ...] | None = None


@dataclass(frozen=True)
class TaskSpec:
    """One GLUE task.

    Args:
        name (`str`): the `nyu-mll/glue` config name (`"sst2"`, `"mnli"`, ...).
        text_columns (`tuple[str, ...]`): one column (single sentence) or two (sentence pair), as named on the Hub.
        label_names (`tuple[str, ...]`): class names in label-id order; empty for a regression task (STS-B).
        metrics (`tuple[str, ...]`): metric names as GLUE reports them; the first is the task's main metric.
        tsv (`TsvLayout`): the original file layout, for `--data-dir`.
        eval_splits (`tuple[str, ...]`): validation splits; the first is the one the main metric is read from.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    tsv: TsvLayout
    eval_splits: tuple[str, ...] = ("validation",)

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def main_metric(self) -> str:
        return self.metrics[0]

    @property
    def is_pair(self) -> bool:
        return len(self.text_columns) == 2


_ENTAIL2 = ("entailment", "not_entailment")
_DEV = {"train": "train.tsv", "validation": "dev.tsv"}

GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec("cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
                 TsvLayout("CoLA", _DEV, ("sentence",), "label",
                           header=("source", "label", "original_label", "sentence"))),
        TaskSpec("sst2", ("sentence",), ("negative", "positive"), ("accuracy",),
                 TsvLayout("SST-2", _DEV, ("sentence",), "label")),
        TaskSpec("mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("f1", "accuracy"),
                 TsvLayout("MRPC", _DEV, ("#1 String", "#2 String"), "Quality")),
        TaskSpec("stsb", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"),
                 TsvLayout("STS-B", _DEV, ("sentence1", "sentence2"), "score")),
        TaskSpec("qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("f1", "accuracy"),
                 TsvLayout("QQP", _DEV, ("question1", "question2"), "is_duplicate")),
        TaskSpec("mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
                 TsvLayout("MNLI", {"train": "train.tsv", "validation_matched": "dev_matched.tsv",
                                    "validation_mismatched": "dev_mismatched.tsv"},
                           ("sentence1", "sentence2"), "gold_label"),
                 eval_splits=("validation_matched", "validation_mismatched")),
        TaskSpec("qnli", ("question", "sentence"), _ENTAIL2, ("accuracy",),
                 TsvLayout("QNLI", _DEV, ("question", "sentence"), "label")),
        TaskSpec("rte", ("sentence1", "sentence2"), _ENTAIL2, ("accuracy",),
                 TsvLayout("RTE", _DEV, ("sentence1", "sentence2"), "label")),
        # WNLI's files hold 0/1, and the Hub copy names them in this order (1 = entailment).
        TaskSpec("wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
                 TsvLayout("WNLI", _DEV, ("sentence1", "sentence2"), "label")),
    )
}

# Spellings people use for the same task (the folder names of the GLUE download, "sts-b", ...).
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(name: str) -> TaskSpec:
    """The `TaskSpec` of a GLUE task by name (`"sst2"`, `"SST-2"`, `"mnli"` ...).

    Raises:
        ValueError: the name is not a GLUE task; the message lists the known names.

    Example:
        ```python
        >>> get_task("SST-2").num_labels
        2
        ```
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"unknown task {name!r}; expected one of {', '.join(GLUE_TASKS)}")
    return GLUE_TASKS[key]
