"""Recovery of a pruned causal LM: `hfprune prune --task causal-lm ... --distill / --lora R` (a plain folder, the
distillation loss really used, the token budget and the recovery windows in the report), `recover_causal_lm` (the
first step's loss is the hand-computed KL, LoRA merged away), bad input (one line, nothing written), and
`--lm-eval-tasks` on a local two-choice task written from SST-2 dev."""

from __future__ import annotations

import copy
import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import transformers
from safetensors import safe_open
from tiny_lm import WORDS, save_tiny_llama, write_text

import hfprune
from hfprune.app.cli.main import main
from hfprune.recovery.kd import kd_loss

SST2_DEV = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def lm(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    save_tiny_llama(root / "model")
    save_tiny_llama(root / "wide_vocab", extra_vocab=5)
    write_text(root / "train.txt")
    return root


def _run(argv, capsys):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _argv(root, out, *extra):
    return ["prune", "--task", "causal-lm", "--model", root / "model", "--text-file", root / "train.txt",
            "--num-samples", "8", "--seq-len", "16", "--batch-size", "4", "--eval-samples", "4",
            "--heads", "0.33", "--ffn", "0.25", "--uniform", "--round-to", "16", "--output", out, "--quiet", *extra]


def _plain_keys(folder: Path) -> list[str]:
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        return list(f.keys())


def test_distill_recovery_writes_a_plain_folder_and_uses_the_kd_loss(lm, tmp_path, capsys):
    rc, _, err = _run(_argv(lm, tmp_path / "kd", "--hidden", "0.25", "--distill", "--recover-steps", "3"), capsys)
    assert rc == 0, err
    results = json.loads((tmp_path / "kd" / "results.json").read_text())
    rec = results["recovery"]
    assert rec["loss"] == "distill" and rec["teacher"] == "the model before pruning"
    assert rec["distill"] == {"alpha": 1.0, "temperature": 1.0, "hidden_weight": 0.0}
    assert (rec["steps"], rec["batch_size"], rec["seq_len"], rec["tokens"]) == (3, 4, 16, 3 * 4 * 16)
    assert rec["distinct_windows"] == 12 and rec["shares_tokens_with_calibration"] is False
    report = (tmp_path / "kd" / "report.md").read_text()
    assert "token budget 3 steps x 4 windows x 16 tokens = 192 tokens" in report
    assert "share no token with the 8 calibration windows" in report
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "kd").eval()
    assert plain.config.num_attention_heads == 2 and plain.config.intermediate_size == 48
    assert plain.config.hidden_size == 24 and len(results["plan"]["hidden"]) == 8
    # The same run with the LM loss: a random tiny Llama's LM loss is about ln(vocab) ~ 3.5, while the KL between
    # the pruned model and the model before pruning is far smaller; a run that ignored --distill logs the former.
    rc, _, err = _run(_argv(lm, tmp_path / "lm", "--hidden", "0.25", "--recover-steps", "3"), capsys)
    assert rc == 0, err
    lm_losses = json.loads((tmp_path / "lm" / "results.json").read_text())["recover_losses"]
    assert len(results["recover_losses"]) == 3 and max(results["recover_losses"]) < 0.5 < 2.0 < min(lm_losses)


def test_distill_from_another_teacher_folder(lm, tmp_path, capsys):
    """`--teacher PATH`: a model with the same vocabulary (a folder without a tokenizer is enough)."""
    teacher = save_tiny_llama(tmp_path / "teacher", seed=1, num_hidden_layers=2)
    for path in teacher.glob("tokenizer*"):
        path.unlink()
    out = tmp_path / "out"
    rc, _, err = _run(_argv(lm, out, "--distill", "--teacher", teacher, "--recover-steps", "1"), capsys)
    assert rc == 0, err
    rec = json.loads((out / "results.json").read_text())["recovery"]
    assert rec["teacher"] == str(teacher) and rec["loss"] == "distill"
    assert str(teacher) in (out / "report.md").read_text()


def test_lora_recovery_is_merged_into_a_plain_checkpoint(lm, tmp_path, capsys):
    out = tmp_path / "out"
    rc, _, err = _run(_argv(lm, out, "--hidden", "0.25", "--lora", "8", "--recover-steps", "2", "--learning-rate",
                            "0.01"), capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    assert results["recovery"]["lora"] == 8 and results["recovery"]["loss"] == "lm"
    assert results["perplexity"]["recovered"] != results["perplexity"]["pruned"]  # the adapters trained and merged
    assert not any("lora" in k or "base_layer" in k for k in _plain_keys(out))
    assert not (out / "adapter_config.json").exists()
    assert "LoRA rank 8 merged" in (out / "report.md").read_text()
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert not any("lora" in name for name, _ in plain.named_modules())
    assert results["after"]["params"] == sum(p.numel() for p in plain.parameters())
    assert plain.config.hidden_size == 24


@pytest.mark.parametrize(("extra", "message"), [
    (["--lora", "0", "--recover-steps", "1"], "the LoRA rank must be a positive integer, got 0"),
    (["--lora", "-2", "--recover-steps", "1"], "the LoRA rank must be a positive integer, got -2"),
    (["--distill", "--recover-steps", "1", "--teacher", "{root}/wide_vocab"],
     f"its vocabulary ({len(WORDS) + 7} logits) differs from the model's ({len(WORDS) + 2})"),
    (["--teacher", "{root}/model", "--recover-steps", "1"], "teacher is only used with distill"),
    (["--distill"], "give steps too (--recover-steps N)"),
    (["--hidden", "0.25", "--distill-hidden", "1", "--recover-steps", "1"], "not with prune.hidden"),
    (["--hidden", "1.0"], "hidden must be a fraction in (0, 1), got 1.0"),
    (["--hidden", "0.25", "--criterion", "michel"], "prune.criterion for hidden must be one of"),
    (["--distill", "--distill-hidden", "-1", "--recover-steps", "1"], "hidden_weight must be a number >= 0"),
])
def test_bad_recovery_input_is_one_line_and_writes_nothing(lm, tmp_path, capsys, extra, message):
    before = (lm / "model" / "model.safetensors").read_bytes()
    out = tmp_path / "out"
    rc, _, err = _run(_argv(lm, out, *[e.format(root=lm) for e in extra]), capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists() and (lm / "model" / "model.safetensors").read_bytes() == before


def test_lora_without_peft_is_refused_before_loading(lm, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)  # `import peft` raises ImportError
    monkeypatch.setattr("hfprune.app.causal_lm.run.load_model", lambda *a, **k: pytest.fail("model loaded"))
    rc, _, err = _run(_argv(lm, tmp_path / "out", "--lora", "8", "--recover-steps", "1"), capsys)
    assert rc == 2 and "LoRA recovery needs peft, which is not installed (pip install peft)" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()


def _pruned_pair(lm):
    teacher = transformers.AutoModelForCausalLM.from_pretrained(lm / "model").eval()
    student = copy.deepcopy(teacher)
    hfprune.prune(student, hfprune.PruningPlan(heads={0: [0, 1], 2: [3]}, neurons={1: list(range(30))}))
    ids = torch.randint(2, len(WORDS) + 2, (4, 12), generator=torch.Generator().manual_seed(0))
    return teacher, student, [{"input_ids": ids}]


def test_recover_causal_lm_first_step_loss_is_the_kl_and_lora_merges(lm, tmp_path):
    from hfprune.recovery.causal_lm import recover_causal_lm

    teacher, student, batches = _pruned_pair(lm)
    with torch.no_grad():
        expected = kd_loss(student(batches[0]["input_ids"]).logits, teacher(batches[0]["input_ids"]).logits, 1.0,
                           torch.ones(4, 12, dtype=torch.bool).index_fill_(1, torch.tensor([11]), False))
    model, losses = recover_causal_lm(copy.deepcopy(student), batches, 1, teacher=teacher, distill=True,
                                      work_dir=str(tmp_path / "w1"))
    assert abs(losses[0] - float(expected)) < 1e-5 and float(expected) > 1e-4
    _, hidden = recover_causal_lm(copy.deepcopy(student), batches, 1, teacher=teacher,
                                  distill={"hidden_weight": 1.0}, work_dir=str(tmp_path / "w2"))
    assert hidden[0] > losses[0] + 1e-6  # the hidden-state term is added
    lora_model = copy.deepcopy(student)
    merged, _ = recover_causal_lm(lora_model, batches, 2, lora=4, learning_rate=0.01, work_dir=str(tmp_path / "w3"))
    assert merged is lora_model and not any("lora" in n for n, _ in merged.named_modules())
    assert not torch.equal(merged.model.layers[0].self_attn.q_proj.weight,
                           student.model.layers[0].self_attn.q_proj.weight)
    with pytest.raises(ValueError, match="distill needs a teacher"):
        recover_causal_lm(student, batches, 1, distill=True)
    with pytest.raises(ValueError, match="LoRA rank must be a positive integer, got 0"):
        recover_causal_lm(student, batches, 1, lora=0)


def _sst2_task(folder: Path, rows: int = 12) -> Path:
    """A two-choice lm-eval task (`sst2_local`) from the first SST-2 dev sentences: jsonl + YAML in `folder`."""
    with open(SST2_DEV, encoding="utf-8", newline="") as f:
        data = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[:rows]
    folder.mkdir()
    (folder / "sst2.jsonl").write_text("".join(json.dumps({"sentence": r["sentence"].strip(),
                                                           "label": int(r["label"])}) + "\n" for r in data))
    (folder / "sst2_local.yaml").write_text(
        "task: sst2_local\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
        f"    validation: {folder / 'sst2.jsonl'}\nvalidation_split: validation\noutput_type: multiple_choice\n"
        "doc_to_text: \"{{sentence}}\\nQuestion: Is this sentence positive or negative?\\nAnswer:\"\n"
        "doc_to_target: label\ndoc_to_choice: [\"negative\", \"positive\"]\nmetric_list:\n  - metric: acc\n")
    return folder


def test_lm_eval_tasks_run_for_real_on_a_local_task(lm, tmp_path, capsys):
    pytest.importorskip("lm_eval")
    tasks = _sst2_task(tmp_path / "tasks")
    out = tmp_path / "out"
    argv = _argv(lm, out, "--lm-eval-tasks", "sst2_local", "--lm-eval-include", tasks)
    rc, _, err = _run(argv, capsys)
    assert rc == 0, err
    scores = json.loads((out / "results.json").read_text())["lm_eval"]
    for name in ("dense", "final"):
        assert 0.0 <= scores[name]["sst2_local"]["acc"] <= 1.0
    assert "| sst2_local | acc |" in (out / "report.md").read_text()
    rc, stdout, err = _run(["eval", "--task", "perplexity", "--model", out, "--text-file", lm / "train.txt",
                            "--seq-len", "16", "--eval-samples", "2", "--lm-eval-tasks", "sst2_local",
                            "--lm-eval-include", tasks, "--json", "--quiet"], capsys)
    assert rc == 0, err
    assert 0.0 <= json.loads(stdout)["lm_eval"]["sst2_local"]["acc"] <= 1.0
    rc, _, err = _run(_argv(lm, tmp_path / "o2", "--lm-eval-tasks", " , "), capsys)
    assert rc == 2 and "give at least one task name" in err and not (tmp_path / "o2").exists()
