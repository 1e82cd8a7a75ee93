"""The first paths of a newcomer (issue 18): mistyped flags, GGUF mistakes, cheap checks before any model loads, the
offline GLUE recipe, wrong-task flags for `hfprune eval`, pickle-only folders, and a non-uniform causal-LM head plan
that loads the way results.json says."""

from __future__ import annotations

import json

import pytest
import torch
import transformers
from test_cli_causal_lm import _base, _run, tiny_lm  # noqa: F401  (the tiny Llama fixture)

import hfprune.app.causal_lm.data as lm_data
from hfprune.app.cli.main import main


@pytest.fixture
def no_model_loads(monkeypatch):
    """Any model load fails the test: the error must come from the cheap checks before it."""
    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the input was checked")
    monkeypatch.setattr(lm_data, "load_model", refuse)
    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", refuse)


def test_task_help_lists_causal_lm(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "what to prune for: cola, sst2" in help_text and "image-classification, causal-lm" in help_text


def test_a_mistyped_flag_gets_did_you_mean(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["prune", "--task", "causal-lm", "--model", str(tmp_path), "--haeds", "0.25", "--output", "o"])
    assert exit_.value.code == 2
    assert "--haeds: did you mean --heads?" in capsys.readouterr().err


@pytest.mark.parametrize(("extra", "message"), [
    (["--pattern", "2:3", "--criterion", "sparsegpt"], "M=3 must divide 128 (--pattern"),
    (["--pattern", "4:2"], "needs 0 < N < M (--pattern"),
    (["--heads", "1.5"], "prune.heads must be a fraction in (0, 1)"),
])
def test_patterns_and_ratios_are_checked_before_any_model_loads(tiny_lm, tmp_path, capsys, no_model_loads,  # noqa: F811
                                                                extra, message):
    rc, _, err = _run(_base(tiny_lm, tmp_path / "out") + extra, capsys)
    assert rc == 2 and message in err and len(err.strip().splitlines()) == 1


def test_gguf_mistakes_name_what_to_pass_and_the_gguf_files_found(tiny_lm, tmp_path, capsys,  # noqa: F811
                                                                  no_model_loads):
    folder = tmp_path / "gguf"
    folder.mkdir()
    (folder / "Model.Q4_1.gguf").write_bytes(b"GGUF")
    text = ["--text-file", tiny_lm / "train.txt", "--sparsity", "0.5", "--output", tmp_path / "out"]
    cases = [(["--model", folder / "Model.Q4_1.gguf"], f"pass its folder as --model '{folder}' and the file name "
                                                       "as --gguf-file 'Model.Q4_1.gguf'"),
             (["--model", folder], "holds GGUF weights and no config.json: pass --gguf-file with one of "
                                   "Model.Q4_1.gguf"),
             (["--model", folder, "--gguf-file", "model.gguf"], "'model.gguf' is not in"),
             (["--model", folder, "--gguf-file", "model.gguf"], "the .gguf files there: Model.Q4_1.gguf")]
    for argv, message in cases:
        rc, _, err = _run(["prune", "--task", "causal-lm", *argv, *text], capsys)
        assert rc == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_a_glue_recipe_without_data_fails_at_once_naming_data_dir(tmp_path, capsys, monkeypatch):
    import datasets

    def no_download(*args, **kwargs):
        raise AssertionError("load_dataset was called although the Hub cannot be reached")
    monkeypatch.setattr(datasets, "load_dataset", no_download)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {{name_or_path: {tmp_path}}}\ndata: {{task: sst2}}\nprune: {{heads: 0.5}}\n"
                      f"output: {{dir: {tmp_path / 'out'}}}\n")
    assert main(["run", str(recipe), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach http://127.0.0.1:9" in err and "pass --data-dir DIR" in err


def test_eval_refuses_a_flag_of_another_task_in_one_sentence(tmp_path, capsys):
    assert main(["eval", "--model", str(tmp_path), "--task", "sst2", "--text-file", "t.txt"]) == 2
    assert "--text-file applies to --task perplexity only, not to --task sst2" in capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--task", "perplexity", "--image-size", "32"]) == 2
    assert "--image-size applies to --task image-classification only, not to --task perplexity" in \
        capsys.readouterr().err
    assert main(["eval", "--model", str(tmp_path), "--task", "perplexity", "--seq-len", "32", "--max-length",
                 "64"]) == 2  # --seq-len is the causal-lm option, --max-length GLUE's
    assert "--max-length applies to --task <GLUE task> only, not to --task perplexity" in capsys.readouterr().err


def test_a_pickle_only_folder_is_refused_naming_the_file(tiny_lm, tmp_path, capsys):  # noqa: F811
    folder = tmp_path / "pickled"
    folder.mkdir()
    for name in ("config.json", "tokenizer.json", "tokenizer_config.json"):
        (folder / name).write_bytes((tiny_lm / "model" / name).read_bytes())
    (folder / "pytorch_model.bin").write_bytes(b"not loaded")
    argv = _base(tiny_lm, tmp_path / "out") + ["--layers", "1"]
    argv[argv.index(tiny_lm / "model")] = folder
    rc, _, err = _run(argv, capsys)
    assert rc == 2 and "pytorch_model.bin is a pickle checkpoint" in err


def test_a_non_uniform_gqa_head_plan_shrinks_and_loads_as_results_json_says(tiny_lm, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    rc, stdout, err = _run(_base(tiny_lm, out)[:-1] + ["--heads", "0.25", "--criterion", "activation"], capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["after"]["params"] < results["before"]["params"]
    assert results["after"]["structure"]["kv_heads"] == [2] * 4  # every KV group kept, none repeated
    assert "prune: " in err and "save: " in err and "trust_remote_code=True" in err  # stage lines, truthful log
    card = (out / "README.md").read_text()
    assert "trust_remote_code=True" in card and "pipeline_tag: text-generation" in card
    assert f"loads with AutoModelForCausalLM.from_pretrained('{out}', trust_remote_code=True)" in stdout
    model = transformers.AutoModelForCausalLM.from_pretrained(out, trust_remote_code=results["trust_remote_code"])
    assert sum(p.numel() for p in model.parameters()) == results["after"]["params"]
    assert torch.isfinite(model(torch.tensor([[2, 3, 4, 5]])).logits).all()


def test_a_long_stage_prints_which_block_it_is_at_and_quiet_prints_nothing():
    import io

    from conftest import make_inputs, make_model

    from hfprune.app.common.progress import StageLog, block_progress

    model = make_model("llama")
    blocks = list(model.model.layers)
    expected = [f"[hfprune] prune: at block {i} of 3" for i in (1, 2, 3)]
    for quiet, lines in ((False, expected), (True, [])):
        stream = io.StringIO()
        with block_progress(blocks, StageLog(quiet=quiet, stream=stream), "prune", every=0.0):
            model(**make_inputs(model))
        assert [line.split(" (")[0] for line in stream.getvalue().splitlines()] == lines
        assert all(not b._forward_pre_hooks for b in blocks)  # the hooks are gone afterwards
