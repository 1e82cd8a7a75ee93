"""CPU latency and SST-2 dev accuracy of pruned models in float32 and after int8 dynamic quantization; and the
(absent) CPU speedup of 2:4 and unstructured sparsity.

Starting point: ../shared/models/minilm-l6-sst2 (all-MiniLM-L6-v2 fine-tuned on SST-2). No fine-tuning after pruning
here: the rows show what each step costs in accuracy on its own and what it buys in CPU latency.

* unstructured: `hfprune.sparsify` magnitude, layer-wise, attention + FFN projections (dense kernels: zeros cost the
  same as any other weight on CPU);
* 2:4: the same with pattern "2:4" (PyTorch's 2:4 kernels are CUDA only);
* structured: half of every layer's FFN neurons removed with `hfprune.prune` (score: |W_in row| * |W_out column|);
* int8: `hfprune.quantize_dynamic_int8` (torch.ao dynamic quantization of every nn.Linear).

    python benchmarks/sparsity_speed.py          # ~5 min on 2 shared CPU cores
"""

from __future__ import annotations

import argparse
import datetime
import platform
import shlex
import statistics
import sys
import time

import torch
from sparsity_common import Encoded, accuracy, read_glue_tsv
from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

import hfprune
from hfprune.sparsity import quantize_dynamic_int8, semi_structured_support, sparsify, to_semi_structured


def load(path):
    return AutoModelForSequenceClassification.from_pretrained(path).eval()


def ffn_half_plan(model) -> hfprune.PruningPlan:
    """Drop the half of each layer's FFN neurons with the smallest |W_in row| * |W_out column| (a weight-only score)."""
    adapter = hfprune.get_adapter(model)
    neurons = {}
    for index, layer in enumerate(adapter.layers(model)):
        w_in = adapter.ffn_in(layer)[0].weight.detach()
        w_out = adapter.ffn_out(layer).weight.detach()
        score = w_in.norm(dim=1) * w_out.norm(dim=0)
        neurons[index] = score.argsort()[: score.numel() // 2].tolist()
    return hfprune.PruningPlan(neurons=neurons)


@torch.no_grad()
def latency_ms(model, batch, repeats: int) -> float:
    cuda = next(model.parameters()).is_cuda
    model(**batch)  # warm-up (first-call allocations, quantized kernel selection)
    times = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        t = time.perf_counter()
        model(**batch)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return 1000 * statistics.median(times)


def gpu_two_four(args, tokenizer, sentences) -> list[str]:
    """Dense fp16 vs 2:4 semi-structured fp16 on the GPU, when there is one that supports it."""
    ok, reason = semi_structured_support()
    if not ok:
        return [f"GPU 2:4 benchmark not run: {reason}"]
    batch = {k: v.cuda() for k, v in tokenizer(sentences[:256], padding="max_length", max_length=128,
                                                truncation=True, return_tensors="pt").items()}
    dense = load(args.model).half().cuda().eval()
    sparse = load(args.model)
    sparsify(sparse, pattern="2:4").finalize()
    sparse = sparse.half().cuda().eval()
    with torch.no_grad():
        masked_logits = sparse(**batch).logits
    to_semi_structured(sparse)
    with torch.no_grad():
        diff = (sparse(**batch).logits - masked_logits).abs().max().item()
    dense_ms, sparse_ms = latency_ms(dense, batch, args.repeats), latency_ms(sparse, batch, args.repeats)
    line = (f"GPU ({reason}), fp16, batch 256 x 128 tokens: dense {dense_ms:.2f} ms, 2:4 semi-structured "
            f"{sparse_ms:.2f} ms ({dense_ms / sparse_ms:.2f}x); max abs logit diff vs the masked model {diff:.1e}")
    return [line]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="../shared/models/minilm-l6-sst2")
    parser.add_argument("--data", default="../shared/data/glue/SST-2")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    collate = DataCollatorWithPadding(tokenizer)
    sentences, labels = read_glue_tsv(f"{args.data}/dev.tsv")
    dev = Encoded(tokenizer, sentences, labels, 128)
    batch32 = dict(tokenizer(sentences[:32], padding="max_length", max_length=64, truncation=True,
                             return_tensors="pt"))
    batch1 = dict(tokenizer(sentences[:1], padding="max_length", max_length=64, truncation=True, return_tensors="pt"))

    def variant(kind):
        model = load(args.model)
        if kind.startswith("unstructured"):
            sparsify(model, float(kind.split()[1]) / 100).finalize()
        elif kind == "2:4":
            sparsify(model, pattern="2:4").finalize()
        elif kind == "structured":
            hfprune.prune(model, ffn_half_plan(model))
        return model

    models, rows = {}, []
    for kind in ("dense", "unstructured 50", "unstructured 90", "2:4", "structured"):
        for int8 in (False, True):
            if int8 and kind in ("unstructured 90", "2:4"):
                continue
            model = variant(kind)
            if int8:
                model = quantize_dynamic_int8(model, inplace=True)
            label = {"dense": "dense", "structured": "structured: FFN -50% (hfprune.prune)",
                     "2:4": "2:4 (masked)"}.get(kind, kind + "%")
            key = (label, "int8 dynamic" if int8 else "float32")
            models[key] = model
            rows.append((*key, accuracy(model, dev, collate)))
            print(rows[-1], flush=True)
    # Interleaved rounds: the CPU is shared, so load bursts hit every variant alike instead of a few.
    times = {key: ([], []) for key in models}
    for _ in range(args.repeats):
        for key, model in models.items():
            times[key][0].append(latency_ms(model, batch32, 1))
            times[key][1].append(latency_ms(model, batch1, 3))
    ok, reason = semi_structured_support()
    gpu_lines = gpu_two_four(args, tokenizer, sentences)
    print()
    print(f"command: python {shlex.join(sys.argv)}")
    print(f"machine: {platform.machine()}, {args.threads} torch thread(s) (2 shared cores), torch {torch.__version__}, "
          f"quantized engine {torch.backends.quantized.engine}; date: "
          f"{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; total {time.time() - started:.0f}s")
    print(f"model: {args.model} (all-MiniLM-L6-v2 fine-tuned on SST-2), no fine-tuning after pruning; latency: "
          f"{args.repeats} interleaved rounds over all variants, sequence length 64; "
          f"2:4 GPU kernels here: {ok} ({reason})")
    print()
    med = {k: (statistics.median(v[0]), statistics.median(v[1]), min(v[0]), min(v[1])) for k, v in times.items()}
    base = med[rows[0][:2]]
    print("| model | weights | SST-2 dev accuracy | batch 32: median (min) ms | speedup | batch 1: median (min) ms | "
          "speedup |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for label, dtype, acc in rows:
        m32, m1, min32, min1 = med[(label, dtype)]
        print(f"| {label} | {dtype} | {acc:.4f} | {m32:.0f} ({min32:.0f}) | {base[0] / m32:.2f}x | {m1:.1f} "
              f"({min1:.1f}) | {base[1] / m1:.2f}x |")
    print()
    for line in gpu_lines:
        print(line)


if __name__ == "__main__":
    main()
