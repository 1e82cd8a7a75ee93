"""The documented causal-LM commands on the real SmolLM2-135M: the GGUF command (Wanda 50%) and a head plan without
--uniform; each output folder loads the way its results.json says, in a fresh interpreter where hfprune cannot be
imported."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from hfprune.app.cli.main import main
from tests.smollm import GGUF_FILE, SKIP_REASON, glue_sentences, smollm2_gguf_folder

pytestmark = pytest.mark.slow

# A few short calibration windows: the command's path end to end, not a quality measurement.
SMALL = ["--num-samples", "4", "--seq-len", "64", "--batch-size", "2", "--eval-samples", "2", "--quiet"]

LOAD_WITHOUT_HFPRUNE = """
import json, sys
sys.modules["hfprune"] = None  # `import hfprune` fails: the folder must load with transformers alone
import torch, transformers
folder = sys.argv[1]
results = json.load(open(folder + "/results.json"))
model = transformers.AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=results["trust_remote_code"])
ids = torch.tensor([[1, 2, 3, 4, 5, 6]])
with torch.no_grad():
    logits = model(input_ids=ids).logits
assert torch.isfinite(logits).all()
print(json.dumps({"class": type(model).__name__, "params": sum(p.numel() for p in model.parameters())}))
"""


@pytest.fixture(scope="module")
def calib_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("calib") / "calib.txt"
    path.write_text("\n".join(glue_sentences("SST-2/train.tsv", ("sentence",))[:400]) + "\n")
    return path


def _load_without_hfprune(folder) -> dict:
    done = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_HFPRUNE, str(folder)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_documented_gguf_command_runs_and_its_folder_loads_with_plain_from_pretrained(calib_file, tmp_path,
                                                                                        capsys):
    pytest.importorskip("gguf", reason="the gguf package reads GGUF files (dev extra)")
    folder = smollm2_gguf_folder()
    if folder is None:
        pytest.skip(SKIP_REASON)
    out = tmp_path / "out"
    torch.set_num_threads(2)
    rc = main(["prune", "--task", "causal-lm", "--model", str(folder), "--gguf-file", GGUF_FILE, "--text-file",
               str(calib_file), "--sparsity", "0.5", "--criterion", "wanda", "--output", str(out), *SMALL])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert "Converting" not in captured.err  # --quiet: not even transformers' GGUF conversion bar
    results = json.loads((out / "results.json").read_text())
    assert results["trust_remote_code"] is False and results["loads_as"] == "LlamaForCausalLM"
    assert 0.45 < results["after"]["weight_sparsity"] < 0.55
    assert (out / "README.md").is_file() and "trust_remote_code" not in (out / "README.md").read_text()
    loaded = _load_without_hfprune(out)
    assert loaded == {"class": "LlamaForCausalLM", "params": results["after"]["params"]}


def test_a_head_plan_without_uniform_shrinks_smollm2_and_loads_as_results_json_says(smollm2, calib_file, tmp_path,
                                                                                     capsys):
    source, _, _ = smollm2
    out = tmp_path / "out"
    torch.set_num_threads(2)
    rc = main(["prune", "--task", "causal-lm", "--model", str(source), "--text-file", str(calib_file), "--heads",
               "0.25", "--criterion", "activation", "--output", str(out), *SMALL])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["after"]["params"] < results["before"]["params"]
    assert results["after"]["structure"]["kv_heads"] == results["before"]["structure"]["kv_heads"]  # none repeated
    assert results["trust_remote_code"] is True and (out / "modeling_hfprune.py").is_file()
    assert "trust_remote_code=True" in (out / "README.md").read_text()
    loaded = _load_without_hfprune(out)
    assert loaded == {"class": results["loads_as"], "params": results["after"]["params"]}
