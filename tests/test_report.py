"""Outputs: FLOPs/parameter counts against hand counts, plots, report.md and model card, atomic writes."""

from __future__ import annotations

import copy
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml
from conftest import make_inputs, make_model

import hfprune
from hfprune.app.common.progress import StageLog
from hfprune.app.glue.plots import write_plots
from hfprune.app.glue.report import render_model_card, render_report
from hfprune.app.glue.results import per_layer_rows
from hfprune.flops import base_model_on_meta, layer_costs, measure_latency, model_costs, pruned_model_on_meta


def test_bert_counts_by_hand():
    model = make_model("bert")  # hidden 32, 4 heads of 8, FFN 48
    d, f, s, h, hd = 32, 48, 10, 4, 8
    per_layer = layer_costs(model, seq_len=s)[0]
    params = 4 * (d * d + d) + (d * f + f) + (f * d + d) + 2 * 2 * d  # q k v o, FFN in/out, two LayerNorms
    flops = 2 * s * (4 * d * d + 2 * d * f) + 4 * s * s * h * hd
    assert per_layer == {"heads": 4, "ffn": 48, "params": params, "flops": flops}
    hfprune.prune(model, hfprune.PruningPlan(heads={0: [1]}, neurons={0: list(range(8))}))
    after = layer_costs(model, seq_len=s)[0]
    assert after["params"] == params - (3 * (d * hd + hd) + hd * d) - 8 * (d + 1 + d)
    assert after["flops"] == flops - 2 * s * (4 * d * hd + 2 * d * 8) - 4 * s * s * hd


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "distilbert"])
def test_meta_rebuilds_match_the_live_models(family):
    model = make_model(family)
    dense = model_costs(model, 12)
    hfprune.prune(model, hfprune.PruningPlan(heads={0: [0, 1]}, neurons={1: list(range(10))}, layers=[2]))
    pruned = model_costs(model, 12)
    assert model_costs(base_model_on_meta(model), 12) == dense
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    assert model_costs(pruned_model_on_meta(config), 12) == pruned
    assert pruned["params"] < dense["params"] and pruned["flops"] < dense["flops"]
    rows = per_layer_rows(dense, pruned, model.config.hfprune)
    assert [r["removed"] for r in rows] == [False, False, True]
    assert rows[0]["heads_after"] == rows[0]["heads_before"] - 2 and rows[2]["params_after"] == 0


def test_latency_is_measured_and_restores_mode():
    model = make_model("bert").train()
    seconds = measure_latency(model, make_inputs(model), repeats=2)
    assert seconds > 0 and model.training


def _results(tmp_path: Path) -> dict:
    per_layer = [{"layer": i, "removed": i == 2, "heads_before": 4, "heads_after": 0 if i == 2 else 2,
                  "ffn_before": 48, "ffn_after": 0 if i == 2 else 24, "params_before": 1000,
                  "params_after": 0 if i == 2 else 500, "flops_before": 9000, "flops_after": 0 if i == 2 else 4000}
                 for i in range(3)]
    metrics = {"validation": {"f1": 0.9, "accuracy": 0.85, "loss": 0.3}}
    recipe = {"description": "unit test", "prune": {"criterion": "michel"},
              "data": {"data_dir": None, "train_file": None, "validation_file": None},
              "output": {"push_to_hub": "user/tiny-mrpc"}}
    return {
        "task": "mrpc", "metric": "f1", "metrics": ["f1", "accuracy"], "eval_split": "validation",
        "model": "org/base-model", "date_utc": "2026-01-01 00:00:00", "hfprune_version": "0",
        "transformers_version": "5",
        "machine": {"cpu_count": 2, "torch_threads": 2},
        "dense": {"metrics": metrics, "params": 3000, "flops": 27000, "latency_ms": 10.0},
        "pruned": {"metrics": metrics, "metrics_before_recovery": metrics, "params": 1000, "flops": 8000,
                   "latency_ms": 5.0},
        "params_ratio": 1 / 3, "flops_ratio": 8 / 27, "speedup": 2.0, "flops_seq_len": 128,
        "latency": {"batch_size": 8, "seq_len": 128}, "removed": {"heads": 6, "neurons": 48, "layers": [2]},
        "plan": {"heads": {"0": [0, 1], "1": [2, 3]}}, "per_layer": per_layer,
        "head_importance": [[0.1, 0.2, 0.9, 0.8], [0.7, 0.6, 0.1, 0.0], [None, 0.5, 0.5, 0.5]],
        "sweep": [{"fraction": 0.0, "f1": 0.9}, {"fraction": 0.5, "f1": None}],
        "training": {"recover": {"steps": 10}}, "stage_seconds": {"load": 1.0, "prune": 0.5},
        "reload_max_abs_diff": 0.0, "recipe": recipe,
    }


def test_plots_report_and_card(tmp_path):
    results = _results(tmp_path)
    written = write_plots(results, tmp_path)
    assert written == ["head_importance.png", "structure.png", "sweep.png"]
    for name in written:
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 2000
    report = render_report(results, written)
    assert "| validation f1 | 0.9000 | 0.9000 | 0.9000 |" in report
    assert "| 2 (removed) | 4 -> 0 |" in report and "![sweep.png](sweep.png)" in report and "2.00x" in report
    card = render_model_card(results, has_remote_code=True)
    front = yaml.safe_load(card.split("---")[1])
    assert front["base_model"] == "org/base-model" and front["datasets"] == ["nyu-mll/glue"]
    assert front["metrics"] == ["f1", "accuracy"] and "hfprune" in front["tags"] and "mrpc" in front["tags"]
    assert 'hfprune.load_pruned("user/tiny-mrpc")' in card and "trust_remote_code=True" in card


def test_stage_log_times_and_quiet(capsys, monkeypatch):
    from hfprune.app.common import progress

    clock = iter([100.0, 110.0, 112.5, 120.0, 121.5])  # created, score starts/ends, score again starts/ends
    monkeypatch.setattr(progress, "time", SimpleNamespace(perf_counter=lambda: next(clock)))
    log = StageLog(quiet=False)
    with log.stage("score") as note:
        note["summary"] = "72 heads"
    assert capsys.readouterr().err == "[hfprune] score: 72 heads (2.5 s)\n" and log.seconds == {"score": 2.5}
    with log.stage("score"):
        pass
    assert capsys.readouterr().err == "[hfprune] score (1.5 s)\n"
    assert log.seconds == {"score": 4.0}  # a repeated stage adds up
    monkeypatch.undo()
    quiet = StageLog(quiet=True)
    with quiet.stage("x"):
        pass
    assert capsys.readouterr().err == "" and "x" in quiet.seconds


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    from hfprune.app.glue import writer as outputs

    model = make_model("bert")
    hfprune.prune(model, hfprune.PruningPlan(heads={0: [0]}))

    class Tok:
        def save_pretrained(self, folder):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        outputs.write_outputs(model, Tok(), {"latency_batch": {}}, tmp_path / "out")
    assert list(tmp_path.iterdir()) == []


def test_output_folders_follow_the_umask(tmp_path):
    """Folders written through atomic_dir (save_pruned, save_compressed, CLI outputs) are normal folders, not the
    owner-only (0700) temporary folders they start as: a server or teammate must be able to read them."""
    import os

    from hfprune.io import atomic_dir

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "config.json").write_text("{}")
        model = make_model("bert")
        hfprune.save_pruned(hfprune.prune(model, hfprune.PruningPlan(heads={0: [0]})), tmp_path / "pruned")
        hfprune.save_compressed(model, tmp_path / "compressed")
    finally:
        os.umask(old)
    for name in ("out", "pruned", "compressed"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o755, name


def test_only_an_earlier_hfprune_output_may_be_replaced(tmp_path):
    import json

    from hfprune.app.common.outputs import check_output_dir

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "results.json").write_text(json.dumps({"hfprune_version": "0", "task": "sst2"}))
    (earlier / "model.safetensors").write_bytes(b"")
    check_output_dir(earlier)  # may be replaced
    # A project folder that happens to hold a results.json of its own would be deleted whole by the final move.
    project = tmp_path / "project"
    (project / "src").mkdir(parents=True)
    (project / "results.json").write_text(json.dumps({"hfprune_version": "0"}))
    other = tmp_path / "other"
    other.mkdir()
    (other / "results.json").write_text(json.dumps({"accuracy": 0.9}))
    for folder in (project, other):
        with pytest.raises(FileExistsError, match="not written by hfprune"):
            check_output_dir(folder)


def test_push_offline_is_a_clear_error(tmp_path, monkeypatch):
    from hfprune.app.common.outputs import push_outputs

    make_model("bert").save_pretrained(tmp_path / "out")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConnectionError, match=r"offline.*the outputs are complete in"):
        push_outputs(tmp_path / "out", "user/tiny")
