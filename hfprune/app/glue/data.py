"""Loading a GLUE task from the Hub, an original GLUE folder, or CSV/JSON files, always through `datasets`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .files import features_for, load_glue_dir
from .tasks import TaskSpec, get_task

if TYPE_CHECKING:  # `datasets` takes seconds to import: loaded when data is read, not by `hfprune --help`
    import datasets

GLUE_HUB_ID = "nyu-mll/glue"


def _from_files(task: TaskSpec, files: dict[str, str]) -> datasets.DatasetDict:
    import datasets

    out = {}
    for split, file in files.items():
        path = Path(file)
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found (the {split} file of task {task.name!r})")
        suffix = path.suffix.lower()
        if suffix in (".json", ".jsonl"):
            ds = datasets.load_dataset("json", data_files=str(path), split="train")
        elif suffix in (".csv", ".tsv"):
            # QUOTE_NONE for TSV: GLUE-style sentences hold bare quote characters.
            extra = {"delimiter": "\t", "quoting": 3} if suffix == ".tsv" else {}
            ds = datasets.load_dataset("csv", data_files=str(path), split="train", **extra)
        else:
            raise ValueError(f"{path}: unsupported file type {suffix!r}; use .csv, .tsv, .json or .jsonl")
        needed = (*task.text_columns, "label")
        missing = [c for c in needed if c not in ds.column_names]
        if missing:
            raise ValueError(f"{path}: no column {missing[0]!r} (task {task.name!r} needs columns {list(needed)}, "
                             f"the file has {ds.column_names})")
        ds = ds.select_columns(list(needed))
        if not task.is_regression and ds.features["label"].dtype == "string":
            unknown = sorted(set(ds["label"]) - set(task.label_names))
            if unknown:
                raise ValueError(f"{path}: label {unknown[0]!r} is not one of {list(task.label_names)}")
            ds = ds.map(lambda b: {"label": [task.label_names.index(v) for v in b["label"]]}, batched=True)
        out[split] = ds.cast(features_for(task))
    return datasets.DatasetDict(out)


def _from_hub(spec: TaskSpec) -> datasets.DatasetDict:
    """The task from the Hub copy of GLUE; offline or unreachable: at once, naming the flags that read local files
    (a cached copy still loads with HF_HUB_OFFLINE=1)."""
    import datasets

    from ...remote.hub import hub_unreachable

    why = hub_unreachable()
    try:
        if why is None or "offline" in why:
            return datasets.load_dataset(GLUE_HUB_ID, spec.name)
    except (ConnectionError, OSError) as err:
        why = f"{why}, and it is not in the local cache ({type(err).__name__})"
    raise ConnectionError(f"task {spec.name} has no data folder and the Hub copy {GLUE_HUB_ID} cannot be loaded "
                          f"({why}); pass --data-dir DIR (the original GLUE layout, e.g. ../shared/data/glue) or "
                          "--train-file / --validation-file")


def load_task_data(
    task: str | TaskSpec,
    *,
    data_dir: str | Path | None = None,
    train_file: str | None = None,
    validation_file: str | None = None,
    splits: list[str] | None = None,
    max_train_samples: int | None = None,
    max_eval_samples: int | None = None,
    seed: int = 0,
    sizes: dict | None = None,
) -> datasets.DatasetDict:
    """Load a GLUE task as a `DatasetDict` with the Hub's column names and label ids.

    Sources, in order: `data_dir` (the original GLUE TSV layout: `DIR/SST-2/train.tsv` ...), `train_file` /
    `validation_file` (CSV, TSV or JSON with the task's column names and a `label` column of ids or names), else
    `datasets.load_dataset("nyu-mll/glue", task)` from the Hub.

    Args:
        task (`str` or `TaskSpec`): `"sst2"`, `"mrpc"`, ...
        data_dir (`str`, *optional*): folder in the original GLUE layout.
        train_file, validation_file (`str`, *optional*): CSV/TSV/JSON files (`validation_file` fills the task's first
            eval split; MNLI's second, `validation_mismatched`, is then not loaded).
        splits (`list[str]`, *optional*): splits to load; default `train` plus the task's eval splits.
        max_train_samples (`int`, *optional*): keep a seeded random subset of this size of `train`.
        max_eval_samples (`int`, *optional*): keep the first this-many rows of each eval split.
        seed (`int`, defaults to 0): seed of the training subset.
        sizes (`dict`, *optional*): filled with each split's row count before any subset (for "200 of 872").

    Returns:
        `datasets.DatasetDict` keyed by split.

    Example:
        ```python
        >>> data = load_task_data("sst2", data_dir="../shared/data/glue", max_train_samples=1000)
        >>> data["validation"].num_rows
        872
        ```
    """
    import datasets

    spec = task if isinstance(task, TaskSpec) else get_task(task)
    splits = list(splits or ["train", *spec.eval_splits])
    if data_dir is not None and (train_file or validation_file):
        raise ValueError("give either --data-dir or --train-file/--validation-file, not both")
    if data_dir is not None:
        data = load_glue_dir(spec, data_dir, splits)
    elif train_file or validation_file:
        files = {"train": train_file, spec.eval_splits[0]: validation_file}
        # --validation-file fills the first eval split only; MNLI's mismatched dev set has no file flag, so it is left
        # out here rather than reported missing (an explicit request for it alone is still an error below).
        splits = [s for s in splits if s in files] or splits
        missing = [s for s in splits if not files.get(s)]
        if missing and missing[0] not in files:
            raise ValueError(f"the {missing[0]} split of task {spec.name!r} cannot come from --train-file/"
                             f"--validation-file (that one fills {spec.eval_splits[0]}); use --data-dir or the Hub")
        if missing:
            flag = "--train-file" if missing[0] == "train" else "--validation-file"
            raise ValueError(f"the {missing[0]} split of task {spec.name!r} needs {flag}")
        data = _from_files(spec, {s: files[s] for s in splits})
    else:
        hub = _from_hub(spec)
        data = datasets.DatasetDict({s: hub[s].select_columns([*spec.text_columns, "label"]) for s in splits})
    for split in list(data):
        n = max_train_samples if split == "train" else max_eval_samples
        if n is not None and n < 1:
            raise ValueError(f"max_{'train' if split == 'train' else 'eval'}_samples must be >= 1, got {n}")
        if sizes is not None:
            sizes[split] = data[split].num_rows
        if n is not None and n < data[split].num_rows:
            ds = data[split].shuffle(seed=seed) if split == "train" else data[split]
            data[split] = ds.select(range(n))
    return data


def tokenize(data: datasets.DatasetDict, tokenizer, task: TaskSpec, max_length: int = 128,
             show_progress: bool = True) -> datasets.DatasetDict:
    """Tokenize the task's text columns (one sentence or a pair), keeping `label`; padding is left to the collator."""
    import datasets

    def encode(batch):
        texts = [batch[c] for c in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=max_length)

    was_enabled = datasets.is_progress_bar_enabled()
    if not show_progress:
        datasets.disable_progress_bars()
    try:
        return data.map(encode, batched=True, remove_columns=list(task.text_columns), desc="tokenize")
    finally:
        if was_enabled and not show_progress:
            datasets.enable_progress_bars()
