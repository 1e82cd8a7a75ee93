"""hfprune.io: the one atomic writer, the umask's mode on everything hfprune writes, and format detection."""

from __future__ import annotations

import json
import os
import stat

import pytest
import torch
from safetensors.torch import save_file

import hfprune
from hfprune.callbacks.base import write_section
from hfprune.io import atomic_dir, detect_format, safetensors_sizes, write_atomic
from tests.conftest import make_model


def _modes(root):
    """{relative path: permission bits} of `root` and everything below it."""
    paths = [root, *root.rglob("*")]
    return {str(p.relative_to(root.parent)): stat.S_IMODE(p.stat().st_mode) for p in paths}


@pytest.mark.parametrize("mask", [0o022, 0o027])
def test_every_output_gets_the_umask_mode(tmp_path, mask):
    """save_pruned, save_compressed, the callbacks' importance.json, the remote-code export (a new modeling file
    plus config.json rewritten) and a saved plan: every folder and file written has mode 0o777 / 0o666 minus the
    umask (safetensors 0.8 alone writes its files 0600)."""
    model = hfprune.prune(make_model("bert"), hfprune.PruningPlan(heads={0: [0]}))
    old = os.umask(mask)
    try:
        hfprune.save_pruned(model, tmp_path / "pruned")
        hfprune.add_remote_code(tmp_path / "pruned")
        hfprune.save_compressed(model, tmp_path / "compressed")
        write_section(tmp_path / "run" / "sub", "importance.json", "heads", {"scores": torch.ones(2, 4)})
        write_section(tmp_path / "run" / "sub", "importance.json", "layers", {"scores": torch.ones(2)})
        hfprune.PruningPlan(heads={0: [0]}).to_json(tmp_path / "run" / "plan.json")
        with atomic_dir(tmp_path / "cli-out") as tmp:  # what the CLI's write_outputs writes through
            (tmp / "results.json").write_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "pruned" / "modeling_hfprune.py").is_file()
    assert set(json.loads((tmp_path / "run" / "sub" / "importance.json").read_text())) == {"heads", "layers"}
    found = {}
    for name in ("pruned", "compressed", "run", "cli-out"):
        found.update(_modes(tmp_path / name))
    # save_pruned writes a model card (README.md) too, and every atomic_dir folder its hfprune_output.json marker
    assert len(found) == 15 + 3, sorted(found)
    wrong = {p: oct(m) for p, m in found.items()
             if m != (0o777 if (tmp_path / p).is_dir() else 0o666) & ~mask}
    assert not wrong, f"umask {oct(mask)}: {wrong}"
    assert not [p for p in tmp_path.rglob(".*")], "a temporary file or folder was left behind"


def test_write_atomic_keeps_a_replaced_file_mode_and_leaves_nothing_on_error(tmp_path):
    target = tmp_path / "config.json"
    write_atomic(target, "{}")
    target.chmod(0o640)
    write_atomic(target, b'{"a": 1}')
    assert json.loads(target.read_text()) == {"a": 1}
    assert stat.S_IMODE(target.stat().st_mode) == 0o640

    class Boom(str):
        def encode(self, *args):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomic(target, Boom("x"))
    assert json.loads(target.read_text()) == {"a": 1}  # the old content, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_formats_are_told_apart_by_the_folder(tmp_path):
    model = make_model("bert")
    hfprune.save_pruned(hfprune.prune(model, hfprune.PruningPlan(heads={0: [0]})), tmp_path / "pruned")
    hfprune.save_compressed(model, tmp_path / "compressed")
    assert detect_format(tmp_path / "pruned").name == "hfprune-structured"
    assert detect_format(tmp_path / "compressed").name == "hfprune-sparse"
    assert [f.name for f in hfprune.io.FORMATS][-1] == "hfprune-structured"  # the fallback comes last


def test_safetensors_sizes_reads_the_header(tmp_path):
    tensors = {"a": torch.zeros(3, 5, dtype=torch.bfloat16), "b": torch.zeros(7, dtype=torch.uint8),
               "c": torch.tensor(1.0, dtype=torch.float64), "d": torch.zeros(0, 4)}
    save_file(tensors, str(tmp_path / "x.safetensors"))
    assert safetensors_sizes(tmp_path / "x.safetensors") == {"a": 30, "b": 7, "c": 8, "d": 0}


def test_the_io_names_are_the_package_objects():
    from hfprune.remote import add_remote_code

    assert hfprune.io.load_pruned is hfprune.load_pruned and hfprune.io.save_pruned is hfprune.save_pruned
    assert hfprune.io.atomic_dir is atomic_dir
    assert add_remote_code is hfprune.add_remote_code


def test_the_cli_output_folder_gets_the_umask_mode(tmp_path, capsys):
    """`hfprune prune ... --output OUT` (model, tokenizer, remote code, results, report, plots, card)."""
    from hfprune.app.cli.demo import build_base, synthetic_sentences
    from hfprune.app.cli.main import main

    build_base(tmp_path / "base", seed=0)
    (tmp_path / "glue" / "SST-2").mkdir(parents=True)
    for split, n, seed in (("train", 16, 0), ("dev", 16, 1)):
        texts, labels = synthetic_sentences(n, seed)
        rows = "".join(f"{t}\t{lab}\n" for t, lab in zip(texts, labels))
        (tmp_path / "glue" / "SST-2" / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    old = os.umask(0o027)
    try:
        rc = main(["prune", "--model", str(tmp_path / "base"), "--task", "sst2", "--data-dir", str(tmp_path / "glue"),
                   "--heads", "0.5", "--criterion", "magnitude", "--finetune-steps", "0", "--recover-steps", "0",
                   "--batch-size", "8", "--score-batches", "1", "--output", str(tmp_path / "out"), "--quiet",
                   "--set", "eval.latency_repeats=1", "--set", "eval.latency_seq_len=16",
                   "--set", "eval.latency_batch_size=4"])
    finally:
        os.umask(old)
    assert rc == 0, capsys.readouterr().err
    found = _modes(tmp_path / "out")
    assert {"out/model.safetensors", "out/modeling_hfprune.py", "out/results.json", "out/README.md"} <= set(found)
    wrong = {p: oct(m) for p, m in found.items() if m != (0o750 if (tmp_path / p).is_dir() else 0o640)}
    assert not wrong, wrong
