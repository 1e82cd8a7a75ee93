"""GLUE metrics, computed locally with scikit-learn and scipy (no download, so they work offline).

Wang et al., "GLUE: A Multi-Task Benchmark and Analysis Platform for Natural Language Understanding" (ICLR 2019):
CoLA reports Matthews correlation, MRPC and QQP F1 and accuracy, STS-B Pearson and Spearman correlation, the others
accuracy. The names match the `evaluate` library's `glue` metric (`matthews_correlation`, `f1`, `accuracy`,
`pearson`, `spearmanr`), which stays an optional dependency.
"""

from __future__ import annotations

import math

import numpy as np

from .tasks import TaskSpec, get_task


def predictions_from_logits(task: TaskSpec, logits) -> np.ndarray:
    """Class ids (argmax) for classification tasks, the single output for STS-B."""
    logits = np.asarray(logits)
    if task.is_regression:
        return logits.reshape(len(logits), -1)[:, 0].astype(np.float64)
    if logits.ndim != 2 or logits.shape[1] != task.num_labels:
        raise ValueError(f"task {task.name!r} needs logits of shape [N, {task.num_labels}], got {logits.shape}")
    return logits.argmax(axis=1)


def glue_metrics(task: str | TaskSpec, predictions, references) -> dict[str, float]:
    """The GLUE metrics of `task` for `predictions` (class ids, or scores for STS-B) against `references`.

    Args:
        task (`str` or `TaskSpec`): the GLUE task.
        predictions (array-like): predicted class ids (or STS-B scores), shape [N].
        references (array-like): gold labels, shape [N].

    Returns:
        `dict[str, float]`: the task's metrics, main metric first. A correlation of a constant prediction is `nan`.

    Example:
        ```python
        >>> glue_metrics("mrpc", [1, 1, 0, 1], [1, 0, 0, 1])
        {'f1': 0.8, 'accuracy': 0.75}
        ```
    """
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    spec = task if isinstance(task, TaskSpec) else get_task(task)
    preds, refs = np.asarray(predictions), np.asarray(references)
    if preds.shape != refs.shape or preds.ndim != 1:
        raise ValueError(f"predictions {preds.shape} and references {refs.shape} must be 1-D of the same length")
    if len(refs) == 0:
        raise ValueError("cannot compute metrics on an empty evaluation set")

    def corr(fn) -> float:
        if np.all(preds == preds[0]) or np.all(refs == refs[0]):
            return math.nan  # undefined for a constant series; scipy would warn and return nan too
        return float(fn(preds, refs)[0])

    compute = {
        "accuracy": lambda: float(accuracy_score(refs, preds)),
        "f1": lambda: float(f1_score(refs, preds, zero_division=0.0)),
        "matthews_correlation": lambda: float(matthews_corrcoef(refs, preds)),
        "pearson": lambda: corr(pearsonr),
        "spearmanr": lambda: corr(spearmanr),
    }
    return {name: compute[name]() for name in spec.metrics}


def compute_metrics_fn(task: str | TaskSpec):
    """A `compute_metrics` callable for `transformers.Trainer`, computing the task's GLUE metrics from logits.

    Example:
        ```python
        >>> trainer = Trainer(model=model, args=args, eval_dataset=dev, compute_metrics=compute_metrics_fn("sst2"))
        ```
    """
    spec = task if isinstance(task, TaskSpec) else get_task(task)

    def compute_metrics(eval_pred) -> dict[str, float]:
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        return glue_metrics(spec, predictions_from_logits(spec, logits), np.asarray(eval_pred.label_ids))

    return compute_metrics
