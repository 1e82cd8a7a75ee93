"""The real SmolLM2-135M (llama architecture): a uniform hidden + heads + FFN plan from Minitron activations reloads
with plain `from_pretrained` in a process where hfprune cannot be imported (equal logits)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import transformers

import hfprune

pytestmark = pytest.mark.slow


def test_uniform_hidden_heads_ffn_plan_of_smollm2_reloads_plainly(smollm2, tmp_path):
    folder, _, _ = smollm2
    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(0)
    batches = [{"input_ids": torch.randint(0, 49152, (2, 32), generator=g)} for _ in range(2)]
    hidden = hfprune.hidden_importance(model, batches, criterion="activation", show_progress=False)
    plan = hfprune.select_hidden(hidden, ratio=0.25, round_to=48)  # 576 -> 432 (a multiple of 6 heads)
    heads = hfprune.head_importance(model, batches, criterion="activation", show_progress=False)
    neurons = hfprune.neuron_importance(model, batches, criterion="activation", show_progress=False)
    plan.heads = hfprune.select_heads(heads, ratio=0.25, uniform=True, model=model).heads  # 9/3 -> 6/2
    plan.neurons = hfprune.select_neurons(neurons, ratio=0.25, uniform=True).neurons  # 1536 -> 1152
    hfprune.prune(model, plan)
    structure = hfprune.model_structure(model)
    assert structure["hidden_size"] == 432 and structure["heads"] == [6] * 30 and structure["ffn"] == [1152] * 30
    assert (model.config.hidden_size, model.config.head_dim) == (432, 64)
    ids = torch.randint(0, 49152, (1, 24), generator=g)
    with torch.no_grad():
        pruned = model(input_ids=ids).logits
    quantizer = getattr(model, "hf_quantizer", None)  # the GGUF loader's, on dense floats (see the llm slow test)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    hfprune.save_pruned(model, tmp_path / "out")
    torch.save({"ids": ids, "logits": pruned}, tmp_path / "ref.pt")
    script = (
        "import sys, torch, transformers\n"
        "sys.modules['hfprune'] = None  # hfprune cannot be imported here\n"
        f"ref = torch.load({str(tmp_path / 'ref.pt')!r})\n"
        f"m = transformers.AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}).eval()\n"
        "assert type(m).__name__ == 'LlamaForCausalLM' and m.config.hidden_size == 432\n"
        "with torch.no_grad():\n"
        "    print('DIFF', (m(input_ids=ref['ids']).logits - ref['logits']).abs().max().item())\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout.split("DIFF")[-1]) <= 1e-4
