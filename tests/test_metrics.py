"""GLUE metrics against their definitions (computed by hand here, not by the library under test)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from transformers import EvalPrediction

from hfprune.app.glue.metrics import compute_metrics_fn, glue_metrics, predictions_from_logits
from hfprune.app.glue.tasks import get_task


def test_mrpc_f1_and_accuracy_by_hand():
    preds, refs = [1, 1, 0, 1, 0, 0], [1, 0, 0, 1, 1, 0]
    tp, fp, fn = 2, 1, 1
    f1 = 2 * tp / (2 * tp + fp + fn)
    out = glue_metrics("mrpc", preds, refs)
    assert list(out) == ["f1", "accuracy"]
    assert out["f1"] == pytest.approx(f1) and out["accuracy"] == pytest.approx(4 / 6)


def test_cola_matthews_by_hand():
    preds, refs = np.array([1, 1, 0, 1, 0, 1, 1, 0]), np.array([1, 0, 0, 1, 1, 1, 1, 0])
    tp = int(((preds == 1) & (refs == 1)).sum())
    tn = int(((preds == 0) & (refs == 0)).sum())
    fp = int(((preds == 1) & (refs == 0)).sum())
    fn = int(((preds == 0) & (refs == 1)).sum())
    mcc = (tp * tn - fp * fn) / math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    assert glue_metrics("cola", preds, refs) == {"matthews_correlation": pytest.approx(mcc)}


def test_stsb_correlations_by_hand():
    rng = np.random.default_rng(0)
    refs = rng.uniform(0, 5, 50)
    preds = refs + rng.normal(0, 1, 50)
    pearson = np.corrcoef(preds, refs)[0, 1]

    def rank(x):
        return np.argsort(np.argsort(x))  # no ties in continuous data

    spearman = np.corrcoef(rank(preds), rank(refs))[0, 1]
    out = glue_metrics("stsb", preds, refs)
    assert out["pearson"] == pytest.approx(pearson) and out["spearmanr"] == pytest.approx(spearman)
    assert math.isnan(glue_metrics("stsb", np.ones(5), refs[:5])["pearson"])  # constant prediction: undefined


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte", "wnli"])
def test_accuracy_tasks(task):
    out = glue_metrics(task, [0, 1, 1, 0], [0, 1, 0, 0])
    assert out == {"accuracy": 0.75}


def test_compute_metrics_for_trainer_uses_argmax_and_regression_output():
    logits = np.array([[2.0, -1.0, 0.0], [0.0, 0.1, 3.0], [0.0, 5.0, 1.0]])
    fn = compute_metrics_fn("mnli")
    assert fn(EvalPrediction(predictions=logits, label_ids=np.array([0, 2, 0]))) == {"accuracy": pytest.approx(2 / 3)}
    reg = compute_metrics_fn("stsb")(EvalPrediction(predictions=np.array([[1.0], [2.0], [3.5]]),
                                                    label_ids=np.array([1.5, 2.0, 4.0])))
    assert reg["pearson"] > 0.9 and reg["spearmanr"] == pytest.approx(1.0)


def test_bad_shapes_are_errors():
    with pytest.raises(ValueError, match=r"logits of shape \[N, 3\]"):
        predictions_from_logits(get_task("mnli"), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="same length"):
        glue_metrics("sst2", [0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        glue_metrics("sst2", [], [])
