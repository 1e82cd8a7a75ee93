"""The `hfprune` command line end to end on a tiny BERT built in code (the demo's model and tokenizer), and the
one-line errors for bad input."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import hfprune
from hfprune.app.cli import demo
from hfprune.app.cli.demo import build_base, synthetic_sentences
from hfprune.app.cli.main import COMMANDS, main

FAST = ["--set", "eval.latency_repeats=1", "--set", "eval.latency_seq_len=16", "--set", "eval.latency_batch_size=4",
        "--quiet"]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny matrices: intra-op threads only add synchronisation, which on a shared, busy machine costs seconds.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny BERT checkpoint with a 2-label head, and SST-2-layout data (TSV folder and CSV files)."""
    root = tmp_path_factory.mktemp("tiny")
    build_base(root / "base", seed=0)
    (root / "glue" / "SST-2").mkdir(parents=True)
    for split, n, seed in (("train", 96, 0), ("dev", 24, 1)):
        texts, labels = synthetic_sentences(n, seed)
        rows = "".join(f"{t}\t{lab}\n" for t, lab in zip(texts, labels))
        (root / "glue" / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
        csv_rows = "".join(f"{t},{('negative', 'positive')[lab]}\n" for t, lab in zip(texts, labels))
        (root / f"{split}.csv").write_text("sentence,label\n" + csv_rows)
    return root


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_help_on_every_command(capsys):
    for name in [None, *COMMANDS]:
        with pytest.raises(SystemExit) as exit_info:
            main(([name] if name else []) + ["--help"])
        assert exit_info.value.code == 0
        assert "usage: hfprune" in capsys.readouterr().out
    main_help = subprocess.run([sys.executable, "-m", "hfprune.app.cli.main", "prune", "--help"], capture_output=True,
                               text=True, check=True).stdout
    assert "--heads R" in main_help and "fraction of attention heads to remove" in main_help


def test_prune_writes_everything_and_reloads(tiny, tmp_path, capsys):
    out = tmp_path / "runs" / "out"
    rc, stdout, stderr = _run(["prune", "--model", tiny / "base", "--task", "sst2", "--data-dir", tiny / "glue",
                               "--heads", 0.5, "--ffn", 0.25, "--layers", 1, "--criterion", "michel",
                               "--finetune-steps", 3, "--recover-steps", 2, "--batch-size", 8, "--score-batches", 2,
                               "--sweep", "0,0.5", "--output", out, *FAST], capsys)
    assert rc == 0, stderr
    assert "sst2 validation accuracy: dense" in stdout
    # Both models' training and the number of evaluation examples (issue 18: "dense 0.75 -> pruned 0.80" compared a
    # model after 3 steps with one after 3 + 2, and "validation accuracy" did not say on how many examples).
    assert "(3 fine-tune steps) -> pruned" in stdout and "(3 + 2 recovery steps)" in stdout
    assert re.search(r"\) on \d+ (of \d+ )?examples;", stdout), stdout
    assert "| | dense (3 fine-tune steps) | pruned (no recovery) | pruned (3 + 2 recovery steps) |" in \
        (out / "report.md").read_text()
    assert "examples." in (out / "README.md").read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["out"]  # no temporary folder left next to OUT
    for name in ("config.json", "model.safetensors", "tokenizer.json", "results.json", "report.md", "README.md",
                 "head_importance.png", "structure.png", "sweep.png"):
        assert (out / name).is_file(), name
    assert (out / "structure.png").read_bytes()[:4] == b"\x89PNG"

    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "sst2" and results["metric"] == "accuracy"
    assert 0 <= results["dense"]["metrics"]["validation"]["accuracy"] <= 1
    assert results["removed"]["heads"] == 16 and len(results["removed"]["layers"]) == 1
    assert results["pruned"]["params"] < results["dense"]["params"] and results["flops_ratio"] < 1
    assert results["pruned"]["latency_ms"] > 0 and results["speedup"] > 0
    assert {"load", "finetune", "score", "prune", "recover", "evaluate pruned"} <= set(results["stage_seconds"])
    assert results["reload_max_abs_diff"] < 1e-5
    assert [p["fraction"] for p in results["sweep"]] == [0.0, 0.5]

    model = hfprune.load_pruned(out)
    assert hfprune.model_structure(model) == results["pruned"]["structure"]
    # The reloaded model gives the metric the run measured on the same examples.
    import tempfile

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    saved_tempdir, tempfile.tempdir = tempfile.tempdir, str(scratch)
    try:
        rc, stdout, stderr = _run(["eval", "--model", out, "--task", "sst2", "--data-dir", tiny / "glue", "--json",
                                   "--quiet"], capsys)
    finally:
        tempfile.tempdir = saved_tempdir
    assert rc == 0, stderr
    assert not any(scratch.iterdir())  # the evaluation Trainer's work folder does not outlive the command
    assert json.loads(stdout)["metrics"]["validation"]["accuracy"] == pytest.approx(
        results["pruned"]["metrics"]["validation"]["accuracy"])

    card = (out / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert "hfprune" in front["tags"] and front["metrics"] == ["accuracy"] and front["datasets"] == ["nyu-mll/glue"]
    assert "load_pruned" in card

    rc, stdout, _ = _run(["info", out, "--json", "--seq-len", 16], capsys)
    info = json.loads(stdout)
    assert rc == 0 and info["per_layer"] == results["per_layer"]
    assert info["params_after"] == results["pruned"]["params"] and info["flops_before"] == results["dense"]["flops"]
    rc, stdout, _ = _run(["info", out], capsys)
    assert "removed" in stdout and len(stdout.splitlines()) >= 4 + len(results["per_layer"])


def test_run_recipe_with_overrides_replaces_an_earlier_output(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "model": {"name_or_path": str(tiny / "base"), "max_length": 32},
        "data": {"task": "sst2", "train_file": str(tiny / "train.csv"), "validation_file": str(tiny / "dev.csv")},
        "finetune": {"steps": 2, "batch_size": 8, "layerdrop": 0.5, "layerdrop_mode": "every_other"},
        "prune": {"heads": 0.5, "criterion": "magnitude"},
        "output": {"dir": str(out), "plots": False},
    }))
    out.mkdir()
    (out / "results.json").write_text("{}")  # an earlier run's folder may be replaced
    rc, _, stderr = _run(["run", recipe, "--set", "prune.heads=0.25", "--set", "seed=5", *FAST], capsys)
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["prune"]["heads"] == 0.25 and results["recipe"]["seed"] == 5
    assert results["removed"]["heads"] == 8 and not (out / "structure.png").exists()
    assert "datasets" not in yaml.safe_load((out / "README.md").read_text().split("---")[1])


def _error(argv, capsys, out: Path | None, match: str):
    rc, _, stderr = _run(argv, capsys)
    assert rc == 2
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hfprune "), stderr
    assert match in lines[0], lines[0]
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_bad_input_is_one_line_and_writes_nothing(tiny, tmp_path, capsys):
    out = tmp_path / "out"
    base = ["prune", "--model", tiny / "base", "--data-dir", tiny / "glue", "--output", out, "--quiet"]
    _error([*base, "--task", "sst3"], capsys, out, "unknown task 'sst3'")
    _error([*base, "--task", "sst2", "--heads", 1.5], capsys, out, "prune.heads must be a fraction in [0, 1)")
    _error([*base, "--task", "sst2", "--set", "prune.colour=red"], capsys, out, "unknown key prune.colour")
    # A checkpoint with a 2-label head cannot be evaluated on MNLI (3 labels) without fine-tuning a new head.
    (tiny / "glue" / "MNLI").mkdir(exist_ok=True)
    for name in ("train.tsv", "dev_matched.tsv", "dev_mismatched.tsv"):
        (tiny / "glue" / "MNLI" / name).write_text("index\tsentence1\tsentence2\tgold_label\n0\ta\tb\tneutral\n")
    _error([*base, "--task", "mnli", "--heads", 0.5], capsys, out,
           "has a classification head with 2 labels, but task 'mnli' needs 3")
    # A data dir without the validation split.
    partial = tmp_path / "partial" / "SST-2"
    partial.mkdir(parents=True)
    (partial / "train.tsv").write_text((tiny / "glue" / "SST-2" / "train.tsv").read_text())
    _error(["prune", "--model", tiny / "base", "--task", "sst2", "--data-dir", partial.parent, "--heads", 0.5,
            "--output", out, "--quiet"], capsys, out, "the validation split of task 'sst2' is missing")
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("model: {name_or_path: m}\ndata: {task: sst2}\noutput: {dir: o}\nfinetune: {stepz: 3}\n")
    _error(["run", recipe], capsys, None, "unknown key finetune.stepz")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    _error([*base[:-3], "--task", "sst2", "--heads", 0.5, "--output", foreign], capsys, None, "holds files not written")
    assert (foreign / "notes.txt").read_text() == "keep me"
    _error(["eval", "--model", tmp_path / "nothing", "--task", "sst2", "--data-dir", tiny / "glue"], capsys, None,
           "cannot load")
    _error(["info", tiny / "base"], capsys, None, "no hfprune record")


def test_mnli_from_csv_files_runs_and_evaluates(tiny, tmp_path, capsys):
    # MNLI has two eval splits; CSV files give only the matched one, which must be enough for prune and eval.
    for split, _seed in (("train", 0), ("dev", 1)):
        rows = [line.split(",") for line in (tiny / f"{split}.csv").read_text().splitlines()[1:]]
        labels = ("entailment", "neutral", "contradiction")
        (tmp_path / f"mnli_{split}.csv").write_text("premise,hypothesis,label\n" + "".join(
            f"{text},{text.split()[0]},{labels[i % 3]}\n" for i, (text, _) in enumerate(rows)))
    files = ["--task", "mnli", "--train-file", tmp_path / "mnli_train.csv",
             "--validation-file", tmp_path / "mnli_dev.csv"]
    out = tmp_path / "out"
    rc, stdout, stderr = _run(["prune", "--model", tiny / "base", *files, "--heads", 0.25, "--finetune-steps", 1,
                               "--batch-size", 8, "--score-batches", 1, "--max-eval-samples", 6, "--output", out,
                               "--set", "output.plots=false", *FAST], capsys)
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["eval_split"] == "validation_matched"
    assert set(results["pruned"]["metrics"]) == {"validation_matched"}
    rc, stdout, stderr = _run(["eval", "--model", out, *files, "--max-eval-samples", 6, "--json", "--quiet"], capsys)
    assert rc == 0, stderr
    assert json.loads(stdout)["metrics"]["validation_matched"]["accuracy"] == pytest.approx(
        results["pruned"]["metrics"]["validation_matched"]["accuracy"])


def test_pruning_a_pruned_output_reports_its_own_layers(tiny, tmp_path, capsys):
    # The second run starts from a model whose layer 1 is gone: its per-layer rows are that model's layers, matched
    # to the pruned ones through the records' source indices (not through the original model's indices).
    data = ["--task", "sst2", "--data-dir", tiny / "glue", "--score-batches", 1, "--set", "output.plots=false", *FAST]
    first, second = tmp_path / "first", tmp_path / "second"
    assert _run(["prune", "--model", tiny / "base", "--layers", 1, "--set", "prune.layer_method=gate", "--output",
                 first, *data], capsys)[0] == 0
    rc, _, stderr = _run(["prune", "--model", first, "--heads", 0.25, "--output", second, *data], capsys)
    assert rc == 0, stderr
    results = json.loads((second / "results.json").read_text())
    rows = results["per_layer"]
    assert [r["heads_before"] for r in rows] == results["dense"]["structure"]["heads"]
    assert [r["heads_after"] for r in rows] == results["pruned"]["structure"]["heads"]
    assert not any(r["removed"] for r in rows)
    assert sum(r["params_after"] for r in rows) < sum(r["params_before"] for r in rows)


def test_head_with_another_label_order_is_reordered_to_glue_ids(tiny, tmp_path, capsys):
    # roberta-large-mnli & co. number MNLI contradiction/neutral/entailment; GLUE data and metrics use entailment = 0.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    names = ["CONTRADICTION", "NEUTRAL", "ENTAILMENT"]
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny / "base", num_labels=3, ignore_mismatched_sizes=True, id2label=dict(enumerate(names)),
        label2id={n: i for i, n in enumerate(names)})
    with torch.no_grad():
        model.classifier.bias.copy_(torch.tensor([0.0, 0.0, 50.0]))  # always says ENTAILMENT
    model.save_pretrained(tmp_path / "ck")
    AutoTokenizer.from_pretrained(tiny / "base").save_pretrained(tmp_path / "ck")
    (tmp_path / "dev.csv").write_text("premise,hypothesis,label\na b,c d,entailment\ne f,g h,entailment\n")
    rc, stdout, stderr = _run(["eval", "--model", tmp_path / "ck", "--task", "mnli", "--validation-file",
                               tmp_path / "dev.csv", "--json", "--quiet"], capsys)
    assert rc == 0, stderr
    assert json.loads(stdout)["metrics"]["validation_matched"]["accuracy"] == 1.0


def test_eval_of_a_compressed_sparse_folder(tiny, tmp_path, capsys):
    # save_compressed writes no model.safetensors: eval must load it with load_pruned, like the dense save.
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(tiny / "base")
    hfprune.sparsify(model, 0.5).finalize()
    tokenizer = AutoTokenizer.from_pretrained(tiny / "base")
    hfprune.save_compressed(model, tmp_path / "sparse", tokenizer=tokenizer)
    model.save_pretrained(tmp_path / "dense")
    tokenizer.save_pretrained(tmp_path / "dense")
    scores = []
    for folder in ("sparse", "dense"):
        rc, stdout, stderr = _run(["eval", "--model", tmp_path / folder, "--task", "sst2", "--data-dir", tiny / "glue",
                                   "--json", "--quiet"], capsys)
        assert rc == 0, stderr
        scores.append(json.loads(stdout)["metrics"]["validation"])
    assert scores[0] == scores[1]


def test_pickle_only_checkpoint_is_one_error_line(tiny, tmp_path, capsys):
    from transformers import AutoConfig

    folder = tmp_path / "bin"
    folder.mkdir()
    AutoConfig.from_pretrained(tiny / "base").save_pretrained(folder)
    torch.save({}, folder / "pytorch_model.bin")
    out = tmp_path / "out"
    _error(["eval", "--model", folder, "--task", "sst2", "--data-dir", tiny / "glue", "--quiet"], capsys, None,
           "safetensors weights only")
    _error(["prune", "--model", folder, "--task", "sst2", "--data-dir", tiny / "glue", "--heads", 0.5, "--output",
            out, "--quiet"], capsys, out, "safetensors weights only")


def test_decoder_classifier_whose_tokenizer_has_no_pad_token(tiny, tmp_path, capsys):
    # GPT-2 / Llama tokenizers have no pad token; GLUE batches are padded, and the classifier needs the pad id.
    import transformers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    base_tok = AutoTokenizer.from_pretrained(tiny / "base")
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=base_tok.backend_tokenizer, eos_token="[SEP]",
                                        unk_token="[UNK]")
    assert tokenizer.pad_token is None
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=base_tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, intermediate_size=48, num_labels=2,
                                      max_position_embeddings=64)
    transformers.LlamaForSequenceClassification(config).save_pretrained(tmp_path / "llama")
    tokenizer.save_pretrained(tmp_path / "llama")
    out = tmp_path / "out"
    data = ["--task", "sst2", "--data-dir", tiny / "glue"]
    rc, _, stderr = _run(["prune", "--model", tmp_path / "llama", *data, "--heads", 0.5, "--score-batches", 1,
                          "--batch-size", 4, "--output", out, "--set", "output.plots=false", *FAST], capsys)
    assert rc == 0, stderr
    results = json.loads((out / "results.json").read_text())
    assert results["removed"]["heads"] == 4
    assert json.loads((out / "config.json").read_text())["pad_token_id"] == tokenizer.convert_tokens_to_ids("[SEP]")
    rc, stdout, stderr = _run(["eval", "--model", out, *data, "--json", "--quiet"], capsys)
    assert rc == 0, stderr
    assert json.loads(stdout)["metrics"]["validation"]["accuracy"] == pytest.approx(
        results["pruned"]["metrics"]["validation"]["accuracy"])


def test_new_head_when_fine_tuning_from_a_base_model(tiny):
    from hfprune.app.glue.modeling import load_classifier
    from hfprune.app.glue.tasks import get_task

    torch.manual_seed(0)
    model, _, head = load_classifier(str(tiny / "base"), get_task("mnli"), allow_new_head=True)
    assert head == "new" and model.config.num_labels == 3
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}


def test_demo_runs_the_whole_workflow(tmp_path, capsys, monkeypatch):
    full = demo.demo_recipe

    def short(work, output, seed=0):  # the demo's own recipe, with fewer steps so the test stays short
        recipe = full(work, output, seed)
        recipe.finetune.steps, recipe.recover.steps, recipe.prune.score_batches = 20, 5, 2
        recipe.prune.sweep, recipe.eval.latency_repeats = [0.5], 1
        return recipe

    monkeypatch.setattr(demo, "demo_recipe", short)
    rc, stdout, stderr = _run(["demo", "--output", tmp_path / "demo", "--quiet"], capsys)
    assert rc == 0, stderr
    assert "reloaded with hfprune.load_pruned" in stdout and "heads per layer [" in stdout
    assert "-> positive" in stdout or "-> negative" in stdout
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results["removed"]["heads"] == 16 and results["pruned"]["params"] < results["dense"]["params"]


def test_demo_writes_no_progress_bars_when_stderr_is_not_a_terminal(tmp_path, capfd, monkeypatch):
    """`hfprune demo 2>&1 | cat`: no carriage-return bars (Trainer, tokenization, scoring, loading), stage lines and
    log lines instead."""
    full = demo.demo_recipe

    def short(work, output, seed=0):
        recipe = full(work, output, seed)
        recipe.finetune.steps, recipe.recover.steps, recipe.prune.score_batches = 10, 5, 2
        recipe.prune.sweep, recipe.eval.latency_repeats = [0.5], 1
        return recipe

    monkeypatch.setattr(demo, "demo_recipe", short)
    assert not sys.stderr.isatty()
    assert main(["demo", "--output", str(tmp_path / "demo")]) == 0
    out = capfd.readouterr()
    assert "\r" not in out.err and "\r" not in out.out
    assert "[hfprune] finetune: 10 steps" in out.err and "[hfprune] score:" in out.err
    assert "'loss':" in out.out  # the Trainer's log lines stand in for its bar
