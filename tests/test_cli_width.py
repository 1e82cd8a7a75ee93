"""`hfprune prune --task causal-lm --params P --axes ...`: select_width from the command line (tiny Llama)."""

from __future__ import annotations

import json

import pytest
import torch
import transformers

from tests.test_cli_causal_lm import WORDS, _base, _run, one_thread, tiny_lm  # noqa: F401 (fixtures)


def test_params_target_writes_a_plain_folder_meeting_it(tiny_lm, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + ["--params", "0.75", "--axes", "hidden,heads,ffn", "--round-to", "8"],
                      capsys)
    assert rc == 0, err
    results = json.loads((out / "results.json").read_text())
    dense, pruned = results["before"]["params"], results["after"]["params"]
    assert pruned <= int(0.75 * dense) and pruned > 0.6 * dense
    assert results["plan"]["meta"]["selection"]["units"] == "width"
    plain = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert sum(p.numel() for p in plain.parameters()) == pruned
    ids = torch.randint(2, len(WORDS) + 2, (1, 10))
    assert torch.isfinite(plain(ids).logits).all()


@pytest.mark.parametrize(("extra", "message"), [
    (["--params", "1.0"], "params must be a fraction in (0, 1)"),
    (["--params", "0.7", "--axes", "hidden,width"], "axes must be among hidden, heads, ffn"),
    (["--params", "0.7", "--heads", "0.5"], "drop hidden / heads / ffn"),
    (["--params", "0.7", "--criterion", "magnitude"], "scores by activation"),
])
def test_bad_params_input_is_one_line_and_writes_nothing(tiny_lm, tmp_path, capsys, extra, message):  # noqa: F811
    out = tmp_path / "out"
    rc, _, err = _run(_base(tiny_lm, out) + extra, capsys)
    assert rc == 2 and message in err and err.count("\n") == 1, err
    assert not out.exists()
