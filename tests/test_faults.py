"""Nothing lost: bad inputs and injected faults in the writers, the loaders and weight masks.

Every case asserts the error type, that the message names the offending thing (path, file, shard, tensor, weight),
and that the model / folder is unchanged. Interrupting a save at each stage (after the temporary folder is written,
in the first rename, between the two renames, by an exception, a KeyboardInterrupt or a SIGKILL) leaves the old
output or the new one, never neither, and the next save leaves no temporaries behind.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pytest
import torch
from conftest import make_inputs, make_model

import hfprune
from hfprune import PruningPlan
from hfprune.io import atomic, require_safetensors
from hfprune.sparsity import active_weight_masks, check_no_weight_masks

ROOT = Path(__file__).resolve().parents[1]


# ----- helpers -----------------------------------------------------------------------------------------------------
def _tree(folder: Path) -> dict[str, bytes]:
    """{relative path: content} of every file below `folder` (hidden ones too)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _leftovers(target: Path) -> list[str]:
    """Temporaries and backups of writes to `target` lying next to it."""
    return sorted(p.name for p in target.parent.iterdir() if p.name.startswith(f".{target.name}."))


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same_state(model, before: dict[str, torch.Tensor]) -> bool:
    now = model.state_dict()
    return now.keys() == before.keys() and all(torch.equal(now[k], before[k]) for k in before)


def _pruned(heads=(0,), seed=0):
    return hfprune.prune(make_model("bert", seed=seed), PruningPlan(heads={0: list(heads)}))


@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("my notes")
    (folder / "sub").mkdir()
    (folder / "sub" / "data.bin").write_bytes(b"\x00\x01")
    return folder


@pytest.fixture
def saved(tmp_path):
    """An earlier hfprune output (model A) and its content."""
    out = tmp_path / "out"
    hfprune.save_pruned(_pruned(), out)
    return out, _tree(out)


# ----- writers: refusals -----------------------------------------------------------------------------------------
WRITERS = {
    "save_pruned": lambda model, path, **kw: hfprune.save_pruned(model, path, **kw),
    "save_compressed": lambda model, path, **kw: hfprune.save_compressed(model, path, **kw),
}


@pytest.mark.parametrize("writer", sorted(WRITERS))
def test_a_folder_of_user_files_is_refused_by_name_and_untouched(writer, user_folder):
    model = _pruned()
    before, state = _tree(user_folder), _state(model)
    with pytest.raises(FileExistsError, match=f"{re.escape(str(user_folder))}.*not written by hfprune.*notes.txt"):
        WRITERS[writer](model, user_folder)
    assert _tree(user_folder) == before and _leftovers(user_folder) == [] and _same_state(model, state)


@pytest.mark.parametrize("writer", sorted(WRITERS))
@pytest.mark.parametrize("overwrite", [False, True])
def test_a_file_is_refused_even_with_overwrite(writer, overwrite, tmp_path):
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"a user's file")
    with pytest.raises(FileExistsError, match=f"output {re.escape(str(target))} is a file"):
        WRITERS[writer](_pruned(), target, overwrite=overwrite)
    assert target.read_bytes() == b"a user's file" and sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_export_compressed_tensors_refuses_a_user_folder(user_folder):
    pytest.importorskip("compressed_tensors")
    from test_serving_plain import make_wide

    before = _tree(user_folder)
    with pytest.raises(FileExistsError, match=f"{re.escape(str(user_folder))}.*not written by hfprune"):
        hfprune.export_compressed_tensors(make_wide("mistral"), user_folder)
    assert _tree(user_folder) == before and _leftovers(user_folder) == []


def test_overwrite_true_replaces_a_user_folder_and_marks_it(user_folder):
    hfprune.save_pruned(_pruned(), user_folder, overwrite=True)
    assert not (user_folder / "notes.txt").exists() and atomic.is_hfprune_output(user_folder)
    assert _leftovers(user_folder) == []


def test_an_earlier_output_and_an_empty_folder_are_replaced_unasked(tmp_path, saved):
    out, old = saved
    hfprune.save_compressed(_pruned(seed=1), out)  # an earlier hfprune output of another kind: replaced
    assert _tree(out) != old and (out / "hfprune_sparse.json").is_file() and _leftovers(out) == []
    empty = tmp_path / "empty"
    empty.mkdir()
    hfprune.save_pruned(_pruned(), empty)
    assert (empty / "model.safetensors").is_file()


def test_a_folder_appearing_during_the_write_is_not_replaced(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(FileExistsError, match=re.escape(str(out))):
        with atomic.atomic_dir(out) as tmp:
            (tmp / "config.json").write_text("{}")
            out.mkdir()
            (out / "theirs.txt").write_text("written meanwhile")
    assert _tree(out) == {"theirs.txt": b"written meanwhile"} and _leftovers(out) == []


def test_write_atomic_refuses_a_folder_by_name(user_folder):
    before = _tree(user_folder)
    with pytest.raises(IsADirectoryError, match=re.escape(str(user_folder))):
        atomic.write_atomic(user_folder, "{}")
    assert _tree(user_folder) == before


# ----- writers: interrupted saves ----------------------------------------------------------------------------------
class Boom(RuntimeError):
    pass


def _fail(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _fail_on_call(real, n, exc):
    """`real`, except that its n-th call (1-based) raises `exc`."""
    calls = []

    def wrapped(*args):
        calls.append(args)
        if len(calls) == n:
            raise exc
        return real(*args)

    return wrapped


class _Tokenizer:
    def __init__(self, exc):
        self.exc = exc

    def save_pretrained(self, folder):
        (Path(folder) / "tokenizer.json").write_text("{}")
        raise self.exc


FAULTS = {
    # stage -> how to inject it (monkeypatch, then save)
    "body raises": lambda mp: {"tokenizer": _Tokenizer(Boom("disk full"))},
    "body KeyboardInterrupt": lambda mp: {"tokenizer": _Tokenizer(KeyboardInterrupt())},
    "after the temporary is written": lambda mp: mp.setattr(atomic, "fsync_tree", _fail(Boom("fsync failed"))),
    "exchange KeyboardInterrupt": lambda mp: mp.setattr(atomic, "exchange", _fail(KeyboardInterrupt())),
    "first rename": lambda mp: (mp.setattr(atomic, "exchange", lambda s, d: False),
                                mp.setattr(atomic, "rename", _fail_on_call(atomic.rename, 1, Boom("EIO")))),
    "between the two renames": lambda mp: (mp.setattr(atomic, "exchange", lambda s, d: False),
                                           mp.setattr(atomic, "rename", _fail_on_call(atomic.rename, 2, Boom("EIO")))),
    "between the two renames, KeyboardInterrupt": lambda mp: (
        mp.setattr(atomic, "exchange", lambda s, d: False),
        mp.setattr(atomic, "rename", _fail_on_call(atomic.rename, 2, KeyboardInterrupt()))),
}


@pytest.mark.parametrize("stage", list(FAULTS))
def test_an_interrupted_save_keeps_the_old_output(stage, saved, monkeypatch):
    out, old = saved
    model = _pruned(heads=(1, 2), seed=1)
    with monkeypatch.context() as mp:
        kwargs = FAULTS[stage](mp)
        with pytest.raises((Boom, KeyboardInterrupt)):
            hfprune.save_pruned(model, out, **(kwargs if isinstance(kwargs, dict) else {}))
    assert _tree(out) == old and _leftovers(out) == []
    hfprune.save_pruned(model, out)  # the next save works and leaves nothing behind
    assert _tree(out) != old and _leftovers(out) == []
    inputs = make_inputs(model)
    assert torch.allclose(hfprune.load_pruned(out)(**inputs).logits, model(**inputs).logits, atol=1e-6)


def test_an_interrupt_after_the_exchange_leaves_the_new_output(saved, monkeypatch):
    out, old = saved
    real = atomic.exchange

    def exchange_then_interrupt(src, dst):
        assert real(src, dst)
        raise KeyboardInterrupt

    monkeypatch.setattr(atomic, "exchange", exchange_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        hfprune.save_pruned(_pruned(heads=(1, 2), seed=1), out)
    assert _tree(out) != old and (out / "model.safetensors").is_file() and _leftovers(out) == []


_KILLED_WRITE = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from hfprune.io import atomic
    out, stage = Path(sys.argv[1]), sys.argv[2]
    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)
    if stage == "between the two renames":  # a system without the one-step exchange
        atomic.exchange = lambda src, dst: False
        real, calls = atomic.rename, []
        def rename(src, dst):
            calls.append(src)
            if len(calls) == 2:
                die()
            real(src, dst)
        atomic.rename = rename
    with atomic.atomic_dir(out) as tmp:
        (tmp / "weights").write_bytes(b"new")
        if stage == "body":
            die()
""")


@pytest.mark.parametrize("stage", ["body", "between the two renames"])
def test_a_killed_save_is_cleaned_or_recovered_by_the_next_one(stage, tmp_path):
    out = tmp_path / "out"
    with atomic.atomic_dir(out) as tmp:
        (tmp / "weights").write_bytes(b"old")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", _KILLED_WRITE, str(out), stage], env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    left = _leftovers(out)
    assert any(".tmp-" in name for name in left) or any(".old-" in name for name in left), left
    if stage == "body":
        assert (out / "weights").read_bytes() == b"old"
    else:  # the old output waits in its backup, never lost; the next write moves it back first
        backup = next(out.parent.glob(f".{out.name}.old-*"))
        assert not out.exists() and (backup / "weights").read_bytes() == b"old"
    with pytest.raises(Boom):  # a next write that fails too: the old output is back in place, not deleted
        with atomic.atomic_dir(out):
            raise Boom("again")
    assert (out / "weights").read_bytes() == b"old" and _leftovers(out) == []
    with atomic.atomic_dir(out) as tmp:
        (tmp / "weights").write_bytes(b"newer")
    assert (out / "weights").read_bytes() == b"newer" and _leftovers(out) == []


def test_temporaries_of_a_live_writer_are_kept(tmp_path):
    out = tmp_path / "out"
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        theirs = tmp_path / f".out.tmp-{other.pid}-{'a' * 32}"
        theirs.mkdir()
        dead = tmp_path / f".out.tmp-{2 ** 22 + 12345}-{'b' * 32}"  # above Linux's largest pid: no such process
        dead.mkdir()
        with atomic.atomic_dir(out) as tmp:
            (tmp / "x").write_text("1")
        assert theirs.is_dir() and not dead.exists()
    finally:
        other.kill()
        other.wait()


def test_write_atomic_interrupted_keeps_the_old_file_and_cleans_up_next_time(tmp_path, monkeypatch):
    target = tmp_path / "plan.json"
    atomic.write_atomic(target, "old")
    (tmp_path / f".plan.json.tmp-{os.getpid()}-{'c' * 32}").write_text("half")  # left by an earlier crash
    with monkeypatch.context() as mp:
        mp.setattr(os, "replace", _fail(KeyboardInterrupt()))
        with pytest.raises(KeyboardInterrupt):
            atomic.write_atomic(target, "new")
    assert target.read_text() == "old"
    atomic.write_atomic(target, "new")
    assert target.read_text() == "new" and _leftovers(target) == []


# ----- loading -----------------------------------------------------------------------------------------------------
def _sharded(tmp_path: Path, weight_map: dict | str) -> Path:
    folder = tmp_path / "sharded"
    hfprune.save_pruned(_pruned(), folder)
    (folder / "model.safetensors").rename(folder / "model-00001-of-00001.safetensors")
    text = weight_map if isinstance(weight_map, str) else json.dumps({"metadata": {}, "weight_map": weight_map})
    (folder / "model.safetensors.index.json").write_text(text)
    return folder


def _load_fails(folder: Path, error, pattern: str):
    before = _tree(folder)
    with pytest.raises(error, match=pattern):
        hfprune.load_pruned(folder)
    assert _tree(folder) == before


def test_a_shard_outside_the_folder_is_refused_naming_shard_and_index(tmp_path):
    hfprune.save_pruned(_pruned(), tmp_path / "outside_src")
    shutil.copy(tmp_path / "outside_src" / "model.safetensors", tmp_path / "outside.safetensors")
    folder = _sharded(tmp_path, {"bert.embeddings.word_embeddings.weight": "../outside.safetensors"})
    _load_fails(folder, ValueError, r"shard '\.\./outside\.safetensors' listed in .*model\.safetensors\.index\.json "
                                    "points outside the folder")


def test_an_absolute_shard_name_is_refused(tmp_path):
    folder = _sharded(tmp_path, {"a": str(tmp_path / "x.safetensors")})
    _load_fails(folder, ValueError, "points outside the folder")


def test_a_link_out_of_the_folder_is_refused(tmp_path):
    hfprune.save_pruned(_pruned(), tmp_path / "elsewhere")
    folder = _sharded(tmp_path, {"a": "model-00001-of-00001.safetensors", "b": "link.safetensors"})
    (folder / "link.safetensors").symlink_to(tmp_path / "elsewhere" / "model.safetensors")
    _load_fails(folder, ValueError, "shard 'link.safetensors'.*points outside the folder")


def test_a_missing_shard_is_named(tmp_path):
    folder = _sharded(tmp_path, {"a": "model-00001-of-00001.safetensors", "b": "model-00002-of-00002.safetensors"})
    _load_fails(folder, FileNotFoundError, r"index\.json lists shards that are missing: .*model-00002-of-00002")


def test_a_broken_index_is_named(tmp_path):
    folder = _sharded(tmp_path, "{not json")
    _load_fails(folder, ValueError, r"model\.safetensors\.index\.json: not a safetensors index")


@pytest.mark.parametrize("damage", ["truncated", "garbage", "header only"])
def test_a_corrupt_safetensors_file_is_named(damage, tmp_path):
    folder = tmp_path / "out"
    hfprune.save_pruned(_pruned(), folder)
    weights = folder / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes({"truncated": data[:-100], "garbage": b"\x00" * 7, "header only": data[:2000]}[damage])
    _load_fails(folder, ValueError, f"{re.escape(str(weights))}: not a readable safetensors file")


def test_a_corrupt_compressed_folder_is_named(tmp_path):
    folder = tmp_path / "sparse"
    hfprune.save_compressed(_pruned(), folder)
    weights = folder / "model.sparse.safetensors"
    weights.write_bytes(weights.read_bytes()[:-64])
    _load_fails(folder, ValueError, f"{re.escape(str(weights))}: not a readable safetensors file")


def test_a_compressed_manifest_naming_a_file_outside_is_refused(tmp_path):
    folder = tmp_path / "sparse"
    hfprune.save_compressed(_pruned(), folder)
    manifest = json.loads((folder / "hfprune_sparse.json").read_text())
    shutil.copy(folder / manifest["weights"], tmp_path / "outside.safetensors")
    manifest["weights"] = "../outside.safetensors"
    (folder / "hfprune_sparse.json").write_text(json.dumps(manifest))
    _load_fails(folder, ValueError, r"weights file '\.\./outside\.safetensors' named in .*hfprune_sparse\.json "
                                    "points outside")


@pytest.mark.parametrize("field, value, what", [("heads", 6, "attention heads"), ("ffn", 99, "FFN neurons"),
                                                ("kv_heads", -1, "key/value heads")])
def test_an_impossible_record_names_layer_tensor_and_shapes(field, value, what, tmp_path):
    folder = tmp_path / "out"
    hfprune.save_pruned(_pruned(), folder)
    config = json.loads((folder / "config.json").read_text())
    config["hfprune"]["layers"][0][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    _load_fails(folder, ValueError, rf"keeps {value} {what} in layer 0, but a layer of this config holds at most "
                                    r"\d+; tensor 'bert\.encoder\.layer\.0\.[a-z.]+weight' has shape \(\d+, \d+\) "
                                    r"in the checkpoint \(\(\d+, \d+\) unpruned\)")


def test_require_safetensors_names_the_pickle_file(tmp_path):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(FileNotFoundError, match=r"pickled/pytorch_model\.bin is a pickle checkpoint"):
        require_safetensors(folder)
    assert _tree(folder) == {"config.json": b"{}", "pytorch_model.bin": b"pickle"}
    (folder / "model.safetensors").write_bytes(b"")
    require_safetensors(folder)  # safetensors present: the loader reads those
    require_safetensors("user/some-model")  # a Hub id: use_safetensors=True guards the download


# ----- weight masks ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("optimizer", [torch.optim.SGD, torch.optim.AdamW])
def test_masks_hold_without_the_handle(optimizer):
    model = make_model("bert")
    hfprune.sparsify(model, 0.5)  # the handle is dropped at once
    gc.collect()
    pruned = {k: model.state_dict()[k] == 0 for k in active_weight_masks(model)}
    assert len(pruned) == 18 and all(0.49 < float(z.float().mean()) < 0.51 for z in pruned.values())
    model.train()
    opt = optimizer(model.parameters(), lr=0.1)
    inputs = make_inputs(model)
    for _ in range(10):
        model(**inputs, labels=torch.tensor([0, 1])).loss.backward()
        opt.step()
        opt.zero_grad()
    state = model.state_dict()
    assert all(bool((state[k][z] == 0).all()) for k, z in pruned.items())
    assert any(not torch.equal(state[k][~z], torch.zeros_like(state[k][~z])) for k, z in pruned.items())


def test_structural_pruning_is_refused_while_masks_are_active():
    model = make_model("bert")
    hfprune.sparsify(model, 0.5, targets=["*layer.1.intermediate.dense"])
    before = _state(model)
    with pytest.raises(ValueError, match=r"prune: weight masks are active on bert\.encoder\.layer\.1\.intermediate"
                                         r"\.dense\.weight \(and 0 more weights\).*finalize\(\)"):
        check_no_weight_masks(model, "prune")
    assert _same_state(model, before)
    handle = active_weight_masks(model)["bert.encoder.layer.1.intermediate.dense.weight"]
    handle.finalize()
    assert active_weight_masks(model) == {}
    check_no_weight_masks(model, "prune")
    hfprune.sparsify(model, 0.3).remove()
    check_no_weight_masks(model, "mask")


def test_a_dropped_model_takes_its_masks_along():
    model = make_model("bert")
    hfprune.sparsify(model, 0.5)
    ref = weakref.ref(model)
    del model
    gc.collect()
    assert ref() is None  # the handle kept by the model does not keep the model alive
