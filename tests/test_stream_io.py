"""hfprune.stream: a checkpoint read block by block and written back equals the source; bad inputs are refused with
the source untouched."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import shutil
from pathlib import Path

import pytest
import torch
import transformers

import hfprune
from hfprune.io.names import OUTPUT_MARKER_NAME
from hfprune.passes.blocks import capture_block_inputs, run_block, with_hidden
from hfprune.passes.forward import block_input
from hfprune.stream import CheckpointReader, CheckpointWriter, StreamedModel
from tests.conftest import logits_of, make_inputs, make_model

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "stream_memory.py"
TOKENIZER_FILE = '{"model_max_length": 64}\n'  # a stand-in side file: the writer copies it byte for byte


def _save(tmp_path, family="llama", dtype=torch.float32, shard="20KB") -> Path:
    model = make_model(family).to(dtype)
    folder = tmp_path / f"src-{family}"
    model.save_pretrained(folder, max_shard_size=shard)
    (folder / "tokenizer_config.json").write_text(TOKENIZER_FILE)
    return folder


def _hashes(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (new files and changed bytes both show)."""
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _shards(folder: Path) -> list[str]:
    return sorted(set(json.loads((folder / "model.safetensors.index.json").read_text())["weight_map"].values()))


def _real_blocks(stream: StreamedModel) -> list[int]:
    return [i for i in range(stream.num_blocks) if not any(p.is_meta for p in stream.block(i).parameters())]


def _stream_copy(source: Path, out: Path, shard="20KB") -> list[int]:
    """Read `source` block by block and write it to `out`; returns how many blocks were real at each step."""
    stream = StreamedModel(source)
    seen = []
    with CheckpointWriter(out, source=stream.reader, max_shard_size=shard) as writer:
        with stream.outside():
            writer.add_tensors(stream.outside_state())
        for index, block in stream.blocks():
            assert all(p.dtype == torch.float32 for p in block.parameters()), "blocks compute in float32"
            seen.append(len(_real_blocks(stream)))
            writer.add_tensors(stream.block_state(index))
    assert _real_blocks(stream) == [], "every block is freed (back to meta) after the loop"
    return seen


@pytest.mark.parametrize("family,dtype", [("llama", torch.bfloat16), ("llama", torch.float32),
                                          ("qwen2", torch.float16), ("gpt2", torch.float32)])
def test_streamed_copy_equals_the_source(tmp_path, family, dtype):
    """Sharded source -> blocks materialized one at a time in float32 -> sharded output in the source's dtype:
    from_pretrained of the output has the same tensors and logits as from_pretrained of the source."""
    source = _save(tmp_path, family, dtype)
    before = _hashes(source)
    seen = _stream_copy(source, tmp_path / "out")
    assert seen == [1, 1, 1]  # one block in memory at a time
    out = tmp_path / "out"
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("model-*.safetensors"))) > 1
    assert (out / "tokenizer_config.json").read_text() == TOKENIZER_FILE
    assert {t.dtype for t in CheckpointReader(out).info.values()} == {dtype}, "stored in the source's dtype"
    reference = transformers.AutoModelForCausalLM.from_pretrained(source).eval()
    copied = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert copied.dtype == dtype
    ref_state, out_state = reference.state_dict(), copied.state_dict()
    assert ref_state.keys() == out_state.keys()
    for name, tensor in ref_state.items():
        assert torch.equal(tensor, out_state[name]), name
    inputs = make_inputs(reference)
    assert torch.equal(logits_of(reference, inputs), logits_of(copied, inputs))
    assert _hashes(source) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", source.name], "no temporary folder left"


def test_a_source_pruned_to_per_layer_shapes_streams_with_them(tmp_path):
    """A checkpoint saved after structured pruning (uneven heads / FFN widths in config.hfprune) is built with its
    recorded shapes, and the copy loads back through load_pruned with the same logits."""
    model = hfprune.prune(make_model("llama"), hfprune.PruningPlan(heads={0: [0, 1]}, neurons={1: list(range(10))}))
    source = tmp_path / "src"
    hfprune.save_pruned(model.to(torch.bfloat16), source, max_shard_size="20KB")
    stream = StreamedModel(source)
    assert tuple(stream.block(1).mlp.up_proj.weight.shape) == (38, 32)
    _stream_copy(source, tmp_path / "out")
    reference, copied = hfprune.load_pruned(source), hfprune.load_pruned(tmp_path / "out")
    assert copied.dtype == torch.bfloat16
    inputs = make_inputs(reference)
    assert torch.equal(logits_of(reference, inputs), logits_of(copied, inputs))


def test_changing_a_block_in_place_changes_the_output_not_the_source(tmp_path):
    """A float32 source computed in float32 may hand out tensors that share the shard's memory map: zeroing them in
    place (what a pruner does) must reach the output and never the source file."""
    source = _save(tmp_path)
    before = _hashes(source)
    stream = StreamedModel(source)
    with CheckpointWriter(tmp_path / "out", source=stream.reader) as writer:
        writer.add_tensors(stream.reader.read(stream.outside_names()))
        for index, block in stream.blocks():
            with torch.no_grad():
                block.mlp.up_proj.weight.mul_(0)
            writer.add_tensors(stream.block_state(index))
    assert _hashes(source) == before
    out = CheckpointReader(tmp_path / "out")
    assert not out.read(["model.layers.2.mlp.up_proj.weight"])["model.layers.2.mlp.up_proj.weight"].any()
    assert out.read(["model.layers.2.mlp.down_proj.weight"])["model.layers.2.mlp.down_proj.weight"].any()


def test_one_shard_output_has_no_index(tmp_path):
    source = _save(tmp_path)
    _stream_copy(source, tmp_path / "out", shard="1GB")
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == sorted(["config.json", "generation_config.json", "model.safetensors", "tokenizer_config.json",
                            OUTPUT_MARKER_NAME])
    copied = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    reference = transformers.AutoModelForCausalLM.from_pretrained(source)
    assert torch.equal(copied.model.layers[2].mlp.down_proj.weight, reference.model.layers[2].mlp.down_proj.weight)


def test_a_streamed_block_walk_gives_the_in_memory_logits(tmp_path):
    """The walk the package docstring promises (pass layer's capture / run_block over `stream.blocks()`) computes the
    loaded model's logits, with one block real at a time."""
    model = make_model("llama")
    model.save_pretrained(tmp_path / "src", max_shard_size="20KB")
    batch = make_inputs(model)
    stream = StreamedModel(tmp_path / "src")
    with stream.outside() as meta_model:
        inputs = capture_block_inputs(meta_model, stream.block(0), [batch], stream.device)
    for _, block in stream.blocks():
        inputs = [with_hidden(args, kwargs, run_block(block, args, kwargs)) for args, kwargs in inputs]
    with stream.outside() as meta_model, torch.no_grad():
        logits = meta_model.lm_head(meta_model.model.norm(block_input(*inputs[0])))
    torch.testing.assert_close(logits, logits_of(model, batch), atol=1e-5, rtol=0)


def test_leaving_the_block_loop_early_frees_the_block(tmp_path):
    stream = StreamedModel(_save(tmp_path))
    for index, _ in stream.blocks():
        assert _real_blocks(stream) == [index]
        if index == 1:
            break
    assert _real_blocks(stream) == []


def test_tied_head_is_one_tensor_when_materialized(tmp_path):
    stream = StreamedModel(_save(tmp_path, "qwen2"))  # tie_word_embeddings=True: the head is saved once
    assert "lm_head.weight" not in stream.reader.info
    with stream.outside() as model:
        assert model.lm_head.weight is model.model.embed_tokens.weight and not model.lm_head.weight.is_meta
        assert "lm_head.weight" not in stream.outside_state()
    assert model.lm_head.weight is model.model.embed_tokens.weight and model.lm_head.weight.is_meta


# ----- bad inputs: clear errors, the source untouched ----------------------------------------------------------------
def test_pickle_only_folder_names_the_file(tmp_path):
    folder = _save(tmp_path)
    for shard in folder.glob("model*.safetensors*"):
        shard.unlink()
    (folder / "pytorch_model.bin").write_bytes(b"pickle stand-in: never read")
    before = _hashes(folder)
    with pytest.raises(FileNotFoundError, match=r"pytorch_model\.bin.*never loads pickle"):
        StreamedModel(folder)
    assert _hashes(folder) == before


def test_missing_shard_names_the_shard_and_the_index(tmp_path):
    folder = _save(tmp_path)
    shard = _shards(folder)[1]
    (folder / shard).unlink()
    before = _hashes(folder)
    with pytest.raises(FileNotFoundError, match=rf"shard '{shard}' named in .*index\.json is missing from"):
        CheckpointReader(folder)
    assert _hashes(folder) == before


@pytest.mark.parametrize("bad", ["../outside.safetensors", str(Path("/tmp/outside.safetensors").resolve()), "..",
                                 "link.safetensors"])
def test_shard_names_may_not_leave_the_folder(tmp_path, bad):
    folder = _save(tmp_path)
    shutil.copy(folder / _shards(folder)[0], tmp_path / "outside.safetensors")
    (folder / "link.safetensors").symlink_to(tmp_path / "outside.safetensors")  # a link out of the folder
    index_file = folder / "model.safetensors.index.json"
    index = json.loads(index_file.read_text())
    index["weight_map"]["model.norm.weight"] = bad
    index_file.write_text(json.dumps(index))
    before = _hashes(folder)
    with pytest.raises(ValueError, match=rf"shard '{re.escape(bad)}' named in .*index\.json points outside the folder"):
        CheckpointReader(folder)
    assert _hashes(folder) == before


def test_shape_that_the_config_does_not_give_is_named(tmp_path):
    folder = _save(tmp_path)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(ValueError, match=r"tensor 'model\.layers\.0\.mlp\.down_proj\.weight' \(shard .*\) has shape "
                                         r"\(32, 48\); the config gives \(32, 40\)"):
        StreamedModel(folder)


@pytest.mark.parametrize("where", ["inside", "same", "holds"])
def test_output_location_is_checked_before_writing(tmp_path, where):
    source = _save(tmp_path)
    out = {"inside": source / "pruned", "same": source, "holds": tmp_path}[where]
    message = {"inside": "is inside the source", "same": "is the source checkpoint", "holds": "would delete the source"}
    before, around = _hashes(source), sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(ValueError, match=message[where]):
        with CheckpointWriter(out, source=CheckpointReader(source)):
            pytest.fail("the body must not run")
    assert _hashes(source) == before and sorted(p.name for p in tmp_path.iterdir()) == around


def test_not_enough_disk_space_names_both_figures(tmp_path, monkeypatch):
    source = _save(tmp_path)
    reader = CheckpointReader(source)
    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage._replace(free=1000))
    shard = 10_000  # the output's tensors + its side files + one shard of scratch space
    needed = reader.nbytes + sum(p.stat().st_size for p in reader.side_files()) + shard
    with pytest.raises(OSError, match=rf"needs about {needed:,} bytes .* has 1,000 bytes .*free"):
        with CheckpointWriter(tmp_path / "out", source=reader, max_shard_size=shard):
            pytest.fail("the body must not run")
    assert not (tmp_path / "out").exists()
    monkeypatch.undo()
    with pytest.raises(OSError, match="not enough disk space"):  # the real file system, asked for an exabyte
        CheckpointWriter(tmp_path / "out", source=reader, expected_bytes=10**18).__enter__()
    assert sorted(p.name for p in tmp_path.iterdir()) == [source.name]


def test_an_error_while_writing_keeps_the_earlier_output(tmp_path):
    source = _save(tmp_path)
    _stream_copy(source, tmp_path / "out")
    earlier = _hashes(tmp_path / "out")
    stream = StreamedModel(source)
    with pytest.raises(RuntimeError, match="walker failed"):
        with CheckpointWriter(tmp_path / "out", source=stream.reader, max_shard_size="10KB") as writer:
            for index, _ in stream.blocks():
                writer.add_tensors(stream.block_state(index))  # some shards are already written
                if index == 1:
                    raise RuntimeError("walker failed")
    assert _hashes(tmp_path / "out") == earlier
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", source.name], "the temporary folder is removed"


def test_a_folder_hfprune_did_not_write_is_replaced_only_with_overwrite(tmp_path):
    source = _save(tmp_path)
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _stream_copy(source, theirs)
    assert _hashes(theirs) == {"notes.txt": hashlib.sha256(b"keep me").hexdigest()}
    stream = StreamedModel(source)
    with CheckpointWriter(theirs, source=stream.reader, overwrite=True) as writer:
        writer.add_tensors(stream.reader.read(stream.reader.names))
    assert not (theirs / "notes.txt").exists() and sorted(CheckpointReader(theirs).names) == sorted(stream.reader.names)


def test_a_tensor_written_twice_is_refused(tmp_path):
    stream = StreamedModel(_save(tmp_path))
    with pytest.raises(ValueError, match=r"tensor 'model\.norm\.weight' was already written"):
        with CheckpointWriter(tmp_path / "out", source=stream.reader) as writer:
            norm = stream.reader.read(["model.norm.weight"])
            writer.add_tensors(norm)
            writer.add_tensors(norm)
    assert not (tmp_path / "out").exists()


# ----- benchmarks/stream_memory.py write + copy, on a tiny shape ------------------------------------------------------
@pytest.fixture(scope="module")
def bench():
    """The script as a module (run in this process: five runs would spend most of their time importing torch)."""
    spec = importlib.util.spec_from_file_location("stream_memory_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(bench, capsys, *args: str) -> dict:
    assert bench.main([*args, "--max-shard-size", "10KB"]) == 0
    stdout = capsys.readouterr().out
    assert "layer 2/2:" in stdout and "peak RSS (VmHWM)" in stdout
    return json.loads(stdout.strip().splitlines()[-1])


def test_benchmark_writes_a_loadable_checkpoint_and_resumes(tmp_path, bench, capsys):
    out = tmp_path / "random"
    shape = ["--hidden", "32", "--layers", "2", "--ffn", "48", "--heads", "4", "--kv-heads", "2", "--vocab", "64"]
    first = _run(bench, capsys, "write", str(out), *shape)
    assert first["shards"] > 2 and first["shards_skipped"] == 0 and first["bytes_written"] > first["model_bytes"]
    files = _hashes(out)
    model = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert model.dtype == torch.bfloat16 and model.config.num_key_value_heads == 2
    assert sum(p.numel() for p in model.parameters()) * 2 == first["model_bytes"]
    assert torch.all(model.model.norm.weight == 1) and 0.01 < model.model.layers[1].mlp.up_proj.weight.std() < 0.03
    again = _run(bench, capsys, "write", str(out), *shape)
    assert again["shards_skipped"] == again["shards"] and again["bytes_written"] == 0
    (out / "model-00002-of-{:05d}.safetensors".format(first["shards"])).unlink()
    (out / "model-00003-of-{:05d}.safetensors".format(first["shards"])).write_bytes(b"truncated")
    third = _run(bench, capsys, "write", str(out), *shape)
    assert third["shards_skipped"] == first["shards"] - 2
    assert _hashes(out) == files, "a resumed run writes the same bytes"
    copied = _run(bench, capsys, "copy", str(out), str(tmp_path / "copy"))
    assert copied["model_bytes"] == first["model_bytes"] and copied["peak_over_model"] > 0
    # `model` read the shards that were deleted or truncated above (from_pretrained maps them): load `out` again.
    written = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    again = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "copy").state_dict()
    assert written.keys() == again.keys()
    for name, tensor in written.items():
        assert torch.equal(tensor, again[name]), name


def test_benchmark_streams_wanda_sparsegpt_and_width(tmp_path, bench, capsys):
    out = tmp_path / "random"
    shape = ["--hidden", "32", "--layers", "2", "--ffn", "48", "--heads", "4", "--kv-heads", "2", "--vocab", "64"]
    _run(bench, capsys, "write", str(out), *shape)
    for job, extra in (("wanda", ["--tokens", "40", "--seq-len", "16"]), ("sparsegpt", ["--tokens", "32"]),
                       ("width", ["--ratio", "0.5"])):
        assert bench.main([job, str(out), str(tmp_path / job), *extra]) == 0
        stdout = capsys.readouterr().out
        assert "block 2/2:" in stdout and "peak / model bytes" in stdout
        result = json.loads(stdout.strip().splitlines()[-1])
        assert result["peak_over_model"] > 0 and result["tokens"] == {"wanda": 40, "sparsegpt": 32, "width": 0}[job]
        model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / job)
        assert model.dtype == torch.bfloat16
    up = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "sparsegpt").model.layers[0].mlp.up_proj.weight
    assert (up == 0).float().mean().item() == 0.5
    narrow = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "width").config
    assert (narrow.num_key_value_heads, narrow.num_attention_heads, narrow.intermediate_size) == (1, 2, 24)
