"""Load saved folders with plain transformers in a process where hfprune cannot be imported (serving tests)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

# Each folder F comes with F.safetensors holding `input_ids`, `attention_mask` and the reference `logits`.
_LOADER = r"""
import sys
sys.modules["hfprune"] = None
import json
from pathlib import Path
import torch
import transformers
from safetensors.torch import load_file

torch.set_num_threads(1)
try:
    import hfprune  # noqa: F401
    raise SystemExit("hfprune is importable in the loader process")
except ImportError:
    pass

results = {}
for folder in sorted(p for p in Path(sys.argv[1]).iterdir() if p.is_dir()):
    ref = load_file(str(folder) + ".safetensors")
    arch = json.loads((folder / "config.json").read_text())["architectures"][0]
    auto = "AutoModelForCausalLM" if arch.endswith("ForCausalLM") else "AutoModelForSequenceClassification"
    model = getattr(transformers, auto).from_pretrained(folder, attn_implementation="eager").eval()
    with torch.no_grad():
        logits = model(input_ids=ref["input_ids"], attention_mask=ref["attention_mask"]).logits
    results[folder.name] = {"class": type(model).__name__, "diff": (logits - ref["logits"]).abs().max().item()}
print("RESULTS " + json.dumps(results))
"""


def save_reference(folder: Path, inputs: dict, logits) -> None:
    from safetensors.torch import save_file

    save_file({"input_ids": inputs["input_ids"], "attention_mask": inputs["attention_mask"],
               "logits": logits.contiguous()}, str(folder) + ".safetensors")


def load_plainly(root: Path) -> dict:
    """{folder name: {"class": built class, "diff": max |logit - reference|}} for every folder under `root`."""
    proc = subprocess.run([sys.executable, "-c", _LOADER, str(root)], capture_output=True, text=True, timeout=300,
                          cwd=root)
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULTS ")), None)
    assert line is not None, f"loader failed (rc={proc.returncode}):\n{proc.stderr[-4000:]}"
    return json.loads(line[len("RESULTS "):])
