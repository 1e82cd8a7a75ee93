"""Loading the model a recipe starts from, with a classification head of the task's size."""

from __future__ import annotations

import logging
from pathlib import Path

from ..data.tasks import TaskSpec

logger = logging.getLogger("hfprune")


def _head_of(config) -> str | None:
    for name in getattr(config, "architectures", None) or []:
        if name.endswith("ForSequenceClassification"):
            return name
    return None


def load_classifier(name_or_path: str, task: TaskSpec, *, allow_new_head: bool):
    """Load `name_or_path` as a sequence classifier for `task` (tokenizer too).

    A checkpoint whose classification head has the task's label count is loaded as it is. A base model (no head) or
    a head of another size gets a new head of the right size only when `allow_new_head` (the recipe fine-tunes
    first); otherwise this is an error, since an untrained head's accuracy means nothing. Folders saved after
    `hfprune.prune` are loaded with `hfprune.load_pruned`.

    Returns:
        `(model, tokenizer, head)`: head is `"loaded"` or `"new"`.

    Raises:
        ValueError: the checkpoint has no usable head and `allow_new_head` is False (names the sizes).
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ..export import load_pruned
    from ..structure import get_record

    try:
        config = AutoConfig.from_pretrained(name_or_path)
    except OSError as err:
        where = "folder" if Path(name_or_path).exists() else "model (not a local folder; Hub lookup failed)"
        raise FileNotFoundError(f"cannot load {where} {name_or_path!r}: {str(err).splitlines()[0]}") from None
    head = _head_of(config)
    fits = head is not None and int(config.num_labels) == task.num_labels
    if not fits and not allow_new_head:
        found = f"a classification head with {config.num_labels} labels" if head else "no classification head"
        raise ValueError(f"model {name_or_path!r} has {found}, but task {task.name!r} needs {task.num_labels}; "
                         "fine-tune from it (--finetune-steps N) to create a new head of the right size, or pass a "
                         f"checkpoint fine-tuned on {task.name}")
    tokenizer = AutoTokenizer.from_pretrained(name_or_path)
    labels = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                            "label2id": {n: i for i, n in enumerate(task.label_names)}}
    problem = "regression" if task.is_regression else "single_label_classification"
    if get_record(config) is not None:
        if not fits:
            raise ValueError(f"model {name_or_path!r} was pruned with a head of {config.num_labels} labels; task "
                             f"{task.name!r} needs {task.num_labels}, and a pruned model cannot get a new head here")
        return load_pruned(name_or_path), tokenizer, "loaded"
    if fits:
        model = AutoModelForSequenceClassification.from_pretrained(name_or_path, use_safetensors=True)
        if labels and set(model.config.id2label.values()) == {f"LABEL_{i}" for i in range(task.num_labels)}:
            model.config.update(labels)  # generic names only: name them after the task for the model card
        return model, tokenizer, "loaded"
    model = AutoModelForSequenceClassification.from_pretrained(
        name_or_path, num_labels=task.num_labels, problem_type=problem, ignore_mismatched_sizes=True,
        use_safetensors=True, **labels)
    logger.info("%s: new %d-label classification head for %s", name_or_path, task.num_labels, task.name)
    return model, tokenizer, "new"
