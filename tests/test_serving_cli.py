"""`hfprune prune --export compressed-tensors --bits 8`: the run's folder also holds the int8 export."""

from __future__ import annotations

import json

import pytest
import torch
from test_cli import FAST, _run, tiny  # noqa: F401  (tiny is a fixture)

import hfprune
from hfprune.app.glue.options import GlueOutput as OutputConfig

pytest.importorskip("compressed_tensors")


def test_prune_with_compressed_tensors_export(tiny, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    rc, _, stderr = _run(["prune", "--model", tiny / "base", "--task", "sst2", "--data-dir", tiny / "glue",
                          "--ffn", 0.25, "--criterion", "magnitude", "--output", out, "--export", "compressed-tensors",
                          "--bits", 8, *FAST], capsys)
    assert rc == 0, stderr
    quant = json.loads((out / "compressed-tensors" / "config.json").read_text())["quantization_config"]
    assert quant["config_groups"]["group_0"]["weights"]["num_bits"] == 8
    assert "compressed-tensors" in json.loads((out / "results.json").read_text())["files"]
    pruned, int8 = hfprune.load_pruned(out), hfprune.load_pruned(out / "compressed-tensors")
    assert hfprune.model_structure(int8) == hfprune.model_structure(pruned)
    ids = torch.randint(1, pruned.config.vocab_size, (2, 9), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a, b = pruned(input_ids=ids).logits, int8(input_ids=ids).logits
    assert 0 < (a - b).abs().max() < 0.05 * a.abs().max()  # quantized, and close
    # The run's own subfolder does not make OUT look like a foreign project folder: a rerun may replace it.
    rc, _, stderr = _run(["prune", "--model", tiny / "base", "--task", "sst2", "--data-dir", tiny / "glue",
                          "--ffn", 0.25, "--criterion", "magnitude", "--output", out, *FAST], capsys)
    assert rc == 0, stderr
    assert not (out / "compressed-tensors").exists()


@pytest.mark.parametrize("argv,match", [(["--bits", "3"], "invalid choice: 3"),
                                        (["--export", "onnx"], "invalid choice: 'onnx'")])
def test_bad_export_flags_are_refused_by_the_parser(argv, match, tiny, tmp_path, capsys):  # noqa: F811
    with pytest.raises(SystemExit):
        _run(["prune", "--model", tiny / "base", "--task", "sst2", "--output", tmp_path / "o", *argv], capsys)
    assert match in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("kwargs,match", [({"export": "onnx"}, "export must be one of"), ({"bits": 6}, "bits must be"),
                                          ({"group_size": 0}, "group_size must be")])
def test_output_config_validates_export_fields(kwargs, match):
    with pytest.raises(ValueError, match=match):
        OutputConfig(dir="out", **kwargs)
