"""Streaming a checkpoint larger than memory. Part 1 (`write`): a random-weight Llama-architecture checkpoint.

`write` builds the model of the given shape on the meta device (names, shapes and order from transformers' own
LlamaForCausalLM, nothing held), plans bf16 shards of at most `--max-shard-size`, and writes each shard's safetensors
header and then its tensors one at a time, in row chunks: the process holds about one chunk of weights (64 MB) at
any moment, whatever the model's size. Matrices are normal(0, 0.02), vectors (norm scales) ones; every tensor has its
own seeded generator, so a rerun writes the same bytes. A shard is written to `<name>.part` and renamed when
complete: a rerun skips complete shards (resume). Prints a line per layer, the bytes written and the peak RSS
(VmHWM of /proc/self/status).

    python benchmarks/stream_memory.py write /data/llama-14b-random \\
        --hidden 5120 --layers 40 --ffn 13824 --heads 40 --kv-heads 8 --vocab 32000   # about 28 GB of bf16

`copy` streams a checkpoint through `hfprune.stream` unchanged (every block materialized in float32 on the CPU, one
at a time, written back in the stored dtype): the floor under any streamed prune. Prints the same figures plus the
ratio peak RSS / model bytes.

    python benchmarks/stream_memory.py copy /data/llama-14b-random /data/llama-14b-copy

Part 2 (`wanda`, `sparsegpt`): `hfprune.stream.sparsify_checkpoint` through it, with `--tokens` random calibration
tokens (seeded, in sequences of `--seq-len`), each block computed in float32 on the CPU and written back in bf16.
Prints a line per block (seconds, current and peak RSS), then the peak RSS (VmHWM), the model's bytes on disk, the
wall time, the tokens and the ratio peak / model bytes.

    python benchmarks/stream_memory.py wanda /data/llama-14b-random /data/llama-14b-wanda --tokens 512
    python benchmarks/stream_memory.py sparsegpt /data/llama-14b-random /data/llama-14b-24 --pattern 2:4

`width`: `hfprune.stream.prune_checkpoint` with a uniform width plan: `--ratio` of every block's KV groups (with their
query heads) and FFN neurons removed (chosen at random, seeded: the figure measured is memory and time, not quality);
the output's config is plain.

    python benchmarks/stream_memory.py width /data/llama-14b-random /data/llama-14b-width --ratio 0.25
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hfprune.arch import get_adapter  # noqa: E402
from hfprune.io.names import WEIGHTS_INDEX_NAME  # noqa: E402
from hfprune.stream import (  # noqa: E402
    CheckpointWriter,
    StreamedModel,
    build_meta_model,
    parse_size,
    prune_checkpoint,
    safetensors_header,
    sparsify_checkpoint,
)

DTYPE = torch.bfloat16
CHUNK_BYTES = 64 * 2**20


def llama_config(args):
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=args.hidden, num_hidden_layers=args.layers, intermediate_size=args.ffn,
                       num_attention_heads=args.heads, num_key_value_heads=args.kv_heads, vocab_size=args.vocab,
                       head_dim=args.hidden // args.heads, max_position_embeddings=4096, tie_word_embeddings=False,
                       architectures=["LlamaForCausalLM"], dtype="bfloat16")


def tensor_plan(config) -> list[tuple[str, tuple[int, ...], int | None]]:
    """`(name, shape, block index or None)` of every tensor the checkpoint holds, in the model's order."""
    model = build_meta_model(config)
    prefix = get_adapter(config).layers_path(model) + "."
    plan = []
    for name, tensor in model.state_dict().items():
        block = int(name[len(prefix):].split(".", 1)[0]) if name.startswith(prefix) else None
        plan.append((name, tuple(tensor.shape), block))
    return plan


def shard_plan(plan, max_bytes: int) -> list[list[tuple[str, tuple[int, ...], int | None]]]:
    shards, current, size = [], [], 0
    for entry in plan:
        nbytes = math.prod(entry[1]) * DTYPE.itemsize
        if current and size + nbytes > max_bytes:
            shards.append(current)
            current, size = [], 0
        current.append(entry)
        size += nbytes
    return shards + [current] if current else shards


def write_tensor(handle, shape: tuple[int, ...], seed: int) -> None:
    """Write one random tensor in row chunks of about CHUNK_BYTES (matrices: normal(0, 0.02); vectors: ones)."""
    if len(shape) == 1:
        handle.write(torch.ones(shape, dtype=DTYPE).view(torch.uint8).numpy().tobytes())
        return
    generator = torch.Generator().manual_seed(seed)
    row_bytes = math.prod(shape[1:]) * DTYPE.itemsize
    step = max(1, CHUNK_BYTES // row_bytes)
    for start in range(0, shape[0], step):
        rows = min(step, shape[0] - start)
        chunk = torch.randn((rows, *shape[1:]), generator=generator, dtype=torch.float32).mul_(0.02).to(DTYPE)
        chunk.view(torch.uint8).numpy().tofile(handle)


def peak_rss() -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def write_checkpoint(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    config = llama_config(args)
    plan = tensor_plan(config)
    shards = shard_plan(plan, parse_size(args.max_shard_size))
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    last_of_block = {entry[2]: entry[0] for entry in plan if entry[2] is not None}
    start, written, skipped, seed_of = time.time(), 0, 0, {entry[0]: i for i, entry in enumerate(plan)}
    for name, entries in zip(names, shards):
        header = safetensors_header([(tensor, DTYPE, shape) for tensor, shape, _ in entries])
        size = len(header) + sum(math.prod(shape) * DTYPE.itemsize for _, shape, _ in entries)
        if _complete(out / name, header, size):
            skipped += 1
        else:
            part = out / (name + ".part")
            with open(part, "wb") as handle:
                handle.write(header)
                for tensor, shape, _ in entries:
                    write_tensor(handle, shape, args.seed * 1_000_003 + seed_of[tensor])
            part.rename(out / name)
            written += size
        for tensor, _, block in entries:
            if block is not None and last_of_block[block] == tensor:
                print(f"layer {block + 1}/{config.num_hidden_layers}: {written / 1e9:.3f} GB written this run, "
                      f"{skipped} shards skipped, {time.time() - start:.1f} s", flush=True)
    total = sum(math.prod(shape) for _, shape, _ in plan) * DTYPE.itemsize
    index = {"metadata": {"total_parameters": total // DTYPE.itemsize, "total_size": total},
             "weight_map": {tensor: name for name, entries in zip(names, shards) for tensor, _, _ in entries}}
    (out / WEIGHTS_INDEX_NAME).write_text(json.dumps(index, indent=2) + "\n")
    config.save_pretrained(out)
    return {"model_bytes": total, "bytes_written": written, "shards": len(shards), "shards_skipped": skipped,
            "seconds": round(time.time() - start, 1), "peak_rss": peak_rss()}


def copy_checkpoint(args) -> dict:
    """Stream `args.source` to `args.out` block by block (float32 compute on the CPU), unchanged."""
    start = time.time()
    stream = StreamedModel(args.source, dtype=torch.float32)
    with CheckpointWriter(args.out, source=stream.reader, max_shard_size=args.max_shard_size) as writer:
        writer.add_tensors(stream.reader.read(stream.outside_names()))
        for index, _ in stream.blocks():
            writer.add_tensors(stream.block_state(index))
            print(f"layer {index + 1}/{stream.num_blocks}: {time.time() - start:.1f} s", flush=True)
    model_bytes = stream.reader.nbytes
    return {"model_bytes": model_bytes, "bytes_written": model_bytes, "shards": len(set(writer.weight_map.values())),
            "shards_skipped": 0, "seconds": round(time.time() - start, 1), "peak_rss": peak_rss(),
            "peak_over_model": round(peak_rss() / model_bytes, 3)}


def current_rss() -> int:
    """The process's resident set now (VmRSS), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def calibration(vocab: int, tokens: int, seq_len: int, seed: int) -> list[dict]:
    """`tokens` random token ids (seeded) in batches of one sequence of `seq_len` (the last one shorter)."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for start in range(0, tokens, seq_len):
        length = min(seq_len, tokens - start)
        ids = torch.randint(1, vocab, (1, length), generator=generator)
        batches.append({"input_ids": ids, "attention_mask": torch.ones_like(ids)})
    return batches


def sparsify_streamed(args) -> dict:
    """Stream Wanda / SparseGPT through `args.source` into `args.out` (float32 compute on the CPU)."""
    start = time.time()
    stream = StreamedModel(args.source)
    batches = calibration(stream.config.vocab_size, args.tokens, args.seq_len, args.seed)
    blocks = stream.num_blocks

    def progress(index, seconds):
        print(f"block {index + 1}/{blocks}: {seconds:.1f} s, RSS {current_rss() / 2**20:.0f} MiB, peak "
              f"{peak_rss() / 2**20:.0f} MiB", flush=True)

    sparsity = None if ":" in args.pattern else args.sparsity
    info = sparsify_checkpoint(stream.reader, args.out, criterion=args.command, sparsity=sparsity,
                               pattern=args.pattern, batches=batches, max_shard_size=args.max_shard_size,
                               progress=progress)
    model_bytes = stream.reader.nbytes
    return {"job": f"{args.command} {info['pattern']} sparsity {info['sparsity']:g}", "model_bytes": model_bytes,
            "bytes_written": model_bytes, "shards": len(list(Path(args.out).glob("*.safetensors"))),
            "shards_skipped": 0, "tokens": info["tokens"], "seconds": round(time.time() - start, 1),
            "peak_rss": peak_rss(), "peak_over_model": round(peak_rss() / model_bytes, 3)}


def width_plan(config, ratio: float, seed: int):
    """A uniform plan: `ratio` of every layer's KV groups (all their query heads) and FFN neurons, seeded at random."""
    import random

    from hfprune import PruningPlan

    rng = random.Random(seed)
    group = config.num_attention_heads // config.num_key_value_heads
    heads, neurons = {}, {}
    for layer in range(config.num_hidden_layers):
        groups = rng.sample(range(config.num_key_value_heads), round(ratio * config.num_key_value_heads))
        heads[layer] = [g * group + h for g in groups for h in range(group)]
        neurons[layer] = rng.sample(range(config.intermediate_size), round(ratio * config.intermediate_size))
    return PruningPlan(heads=heads, neurons=neurons)


def width_streamed(args) -> dict:
    """Stream a uniform width plan through `args.source` into `args.out`."""
    start = time.time()
    stream = StreamedModel(args.source)
    blocks = stream.num_blocks

    def progress(index):
        print(f"block {index + 1}/{blocks}: {time.time() - start:.1f} s, RSS {current_rss() / 2**20:.0f} MiB, peak "
              f"{peak_rss() / 2**20:.0f} MiB", flush=True)

    info = prune_checkpoint(stream.reader, args.out, width_plan(stream.config, args.ratio, args.seed),
                            max_shard_size=args.max_shard_size, progress=progress)
    model_bytes = stream.reader.nbytes
    return {"job": f"width {args.ratio:g} (KV groups + FFN)", "model_bytes": model_bytes,
            "bytes_written": info["bytes"], "shards": len(list(Path(args.out).glob("*.safetensors"))),
            "shards_skipped": 0, "tokens": 0, "seconds": round(time.time() - start, 1), "peak_rss": peak_rss(),
            "peak_over_model": round(peak_rss() / model_bytes, 3)}


def _complete(path: Path, header: bytes, size: int) -> bool:
    """Whether `path` is a finished shard of this plan (its size and header are the planned ones)."""
    if not path.is_file() or path.stat().st_size != size:
        return False
    with open(path, "rb") as handle:
        return handle.read(len(header)) == header


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    write = commands.add_parser("write", help="write a random-weight Llama-architecture bf16 checkpoint")
    write.add_argument("out", help="the checkpoint folder (created; complete shards already there are kept)")
    for flag, default in (("--hidden", 5120), ("--layers", 40), ("--ffn", 13824), ("--heads", 40),
                          ("--kv-heads", 8), ("--vocab", 32000), ("--seed", 0)):
        write.add_argument(flag, type=int, default=default)
    write.add_argument("--max-shard-size", default="2GB")
    copy = commands.add_parser("copy", help="stream a checkpoint block by block to another folder, unchanged")
    copy.add_argument("source")
    copy.add_argument("out")
    copy.add_argument("--max-shard-size", default="2GB")
    for name, pattern in (("wanda", "unstructured"), ("sparsegpt", "2:4")):
        job = commands.add_parser(name, help=f"stream {name} through a checkpoint (hfprune.stream.sparsify_checkpoint)")
        job.add_argument("source")
        job.add_argument("out")
        job.add_argument("--sparsity", type=float, default=0.5, help="unstructured sparsity (N:M patterns fix it)")
        job.add_argument("--pattern", default=pattern)
        job.add_argument("--tokens", type=int, default=512, help="random calibration tokens")
        job.add_argument("--seq-len", type=int, default=128)
        job.add_argument("--seed", type=int, default=0)
        job.add_argument("--max-shard-size", default="2GB")
    width = commands.add_parser("width", help="stream a uniform width plan through a checkpoint (prune_checkpoint)")
    width.add_argument("source")
    width.add_argument("out")
    width.add_argument("--ratio", type=float, default=0.25, help="fraction of KV groups and FFN neurons removed")
    width.add_argument("--seed", type=int, default=0)
    width.add_argument("--max-shard-size", default="2GB")
    args = parser.parse_args(argv)
    run = {"write": write_checkpoint, "copy": copy_checkpoint, "width": width_streamed}.get(args.command,
                                                                                          sparsify_streamed)
    result = run(args)
    print(f"model bytes: {result['model_bytes']:,}  written this run: {result['bytes_written']:,}  shards: "
          f"{result['shards']} ({result['shards_skipped']} skipped)  time: {result['seconds']} s  peak RSS (VmHWM): "
          f"{result['peak_rss'] / 2**20:.0f} MiB" + (f"  tokens: {result['tokens']}  peak / model bytes: "
                                                     f"{result['peak_over_model']}" if "tokens" in result else ""))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
