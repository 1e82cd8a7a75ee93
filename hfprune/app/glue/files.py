"""Reading the original GLUE TSV files (the layout of the GLUE download) into `datasets.Dataset` objects.

The files hold bare quote characters inside sentences, so they are read with `csv.QUOTE_NONE`; MRPC starts with a
UTF-8 byte-order mark, CoLA has no header line, and every task names its columns differently (see `TsvLayout`).
"""

from __future__ import annotations

import csv
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .tasks import TaskSpec

if TYPE_CHECKING:  # `datasets` takes seconds to import: loaded when data is read, not by `hfprune --help`
    import datasets

logger = logging.getLogger("hfprune")

# Some GLUE fields (QNLI passages) exceed the csv module's default 128 KiB field limit.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
# MNLI marks pairs without annotator agreement "-"; like the Hub copy, they are left out.
_UNLABELED = {"-", ""}


def features_for(task: TaskSpec) -> datasets.Features:
    """The `datasets` features of a task: its text columns and a `ClassLabel` (or float for STS-B) label."""
    import datasets

    label = datasets.Value("float32") if task.is_regression else datasets.ClassLabel(names=list(task.label_names))
    return datasets.Features({**{c: datasets.Value("string") for c in task.text_columns}, "label": label})


def task_folder(task: TaskSpec, data_dir: str | Path) -> Path:
    """The folder holding `task`'s files: `data_dir/<GLUE folder>` or, if that is absent, `data_dir` itself."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise FileNotFoundError(f"--data-dir {data_dir} is not a folder")
    nested = data_dir / task.tsv.folder
    if nested.is_dir():
        return nested
    if (data_dir / task.tsv.splits["train"]).exists() and data_dir.name.upper() == task.tsv.folder.upper():
        return data_dir
    raise FileNotFoundError(
        f"--data-dir {data_dir} has no {task.tsv.folder}/ folder for task {task.name!r} "
        f"(expected the original GLUE layout: {data_dir}/{task.tsv.folder}/train.tsv ...)"
    )


def split_path(task: TaskSpec, data_dir: str | Path, split: str) -> Path:
    """The TSV file of one split, or a `FileNotFoundError` that names the file and the split."""
    if split not in task.tsv.splits:
        raise ValueError(f"task {task.name!r} has no split {split!r} (GLUE layout: {sorted(task.tsv.splits)})")
    path = task_folder(task, data_dir) / task.tsv.splits[split]
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: the {split} split of task {task.name!r} is missing from the "
                                "data dir")
    return path


def _label_value(task: TaskSpec, raw: str, where: str):
    raw = raw.strip()
    if task.is_regression:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"{where}: score {raw!r} is not a number") from None
    if raw in task.label_names:
        return task.label_names.index(raw)
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value < len(task.label_names):
        raise ValueError(f"{where}: label {raw!r} is neither an id in 0..{len(task.label_names) - 1} nor one of "
                         f"{list(task.label_names)}")
    return value


def read_glue_tsv(task: TaskSpec, path: str | Path) -> datasets.Dataset:
    """Read one original GLUE TSV file of `task` into a `Dataset` with the Hub's column names and label ids.

    Args:
        task (`TaskSpec`): the task whose layout the file has.
        path (`str` or `Path`): the TSV file.

    Returns:
        `datasets.Dataset` with columns `task.text_columns + ("label",)`.

    Example:
        ```python
        >>> ds = read_glue_tsv(get_task("mrpc"), "../shared/data/glue/MRPC/dev.tsv")
        >>> ds.column_names
        ['sentence1', 'sentence2', 'label']
        ```
    """
    import datasets

    path = Path(path)
    layout = task.tsv
    columns: dict[str, list] = {c: [] for c in (*task.text_columns, "label")}
    skipped = 0
    # utf-8-sig drops MRPC's byte-order mark, which would otherwise glue itself to the first header name.
    with path.open(encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = list(layout.header) if layout.header else next(reader, None)
        if header is None:
            raise ValueError(f"{path} is empty")
        header = [h.strip() for h in header]
        wanted = (*layout.text, layout.label)
        missing = [name for name in wanted if name not in header]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} in the header {header}; is this the {task.name} file?")
        index = {name: header.index(name) for name in wanted}
        first_line = 1 if layout.header else 2
        for line_no, row in enumerate(reader, start=first_line):
            if not row or all(not cell.strip() for cell in row):
                continue
            # QQP and STS-B hold a few rows with missing fields in the original files; they cannot be used.
            if len(row) <= max(index.values()) or row[index[layout.label]].strip() in _UNLABELED:
                skipped += 1
                continue
            for column, name in zip(task.text_columns, layout.text):
                columns[column].append(row[index[name]])
            columns["label"].append(_label_value(task, row[index[layout.label]], f"{path}:{line_no}"))
    if skipped:
        logger.warning("%s: skipped %d rows without a label or with missing fields", path, skipped)
    if not columns["label"]:
        raise ValueError(f"{path} holds no labelled rows for task {task.name!r}")
    return datasets.Dataset.from_dict(columns, features=features_for(task))


def load_glue_dir(task: TaskSpec, data_dir: str | Path, splits: list[str] | None = None) -> datasets.DatasetDict:
    """Load the given splits (default: train + the task's eval splits) of `task` from an original GLUE folder."""
    import datasets

    splits = splits or ["train", *task.eval_splits]
    return datasets.DatasetDict({s: read_glue_tsv(task, split_path(task, data_dir, s)) for s in splits})
