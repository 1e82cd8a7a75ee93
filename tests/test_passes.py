"""The pass layer (hfprune.passes): the only batch drivers, below criteria / importance / sparsity / budget."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import hfprune
from hfprune.passes import is_causal_lm, iter_batches
from tests.conftest import make_model

PACKAGE = Path(hfprune.__file__).parent
UPPER = ("criteria", "importance", "sparsity", "budget")


def _imports(path: Path) -> set[str]:
    """The hfprune modules a file imports (relative imports resolved; `if TYPE_CHECKING:` blocks left out)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    out = set()
    tree = ast.parse(path.read_text())
    skip = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and getattr(node.test, "id", "") ==
            "TYPE_CHECKING" for b in node.body for n in ast.walk(b)}
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[: len(package) - node.level + 1]
            out.add(".".join(base + ([node.module] if node.module else [])))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("hfprune"):
            out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.startswith("hfprune"))
    return out


def _definitions(name: str) -> list[str]:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)) and node.name == name:
                found.append(str(path.relative_to(PACKAGE)))
            elif isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
                found.append(str(path.relative_to(PACKAGE)))
    return found


def test_passes_depend_on_none_of_the_layers_above_them():
    for path in (PACKAGE / "passes").glob("*.py"):
        upward = {m for m in _imports(path) if m.split(".")[1:2] and m.split(".")[1] in UPPER}
        assert not upward, (path.name, upward)


def test_criteria_import_neither_importance_nor_sparsity():
    for path in (PACKAGE / "criteria").glob("*.py"):
        back = {m for m in _imports(path) if m.split(".")[1:2] and m.split(".")[1] in ("importance", "sparsity")}
        assert not back, (path.name, back)


@pytest.mark.parametrize("name", ["iter_batches", "is_causal_lm", "gated_passes", "forward_passes", "walk_blocks",
                                  "all_reduce_sum", "gather_rows", "scoring_mode"])
def test_one_definition_of_each_batch_driver(name):
    found = _definitions(name)
    assert len(found) == 1 and found[0].startswith("passes/"), found


def test_is_causal_lm_reads_tuple_values_of_the_auto_mapping(monkeypatch):
    from transformers.models.auto import modeling_auto

    mapping = dict(modeling_auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES)
    mapping["twin"] = ("TwinForCausalLM", "TwinForCausalLMWithValueHead")
    monkeypatch.setattr(modeling_auto, "MODEL_FOR_CAUSAL_LM_MAPPING_NAMES", mapping)
    twin = type("TwinForCausalLMWithValueHead", (torch.nn.Module,), {})()
    assert is_causal_lm(twin) and is_causal_lm(make_model("llama")) and not is_causal_lm(make_model("bert"))


def test_iter_batches_reads_token_ids_checks_positions_and_refuses_nothing():
    model = make_model("llama")
    (batch,) = iter_batches([torch.arange(6)], need_labels=False, show_progress=False, positions_of=model)
    assert batch["input_ids"].shape == (1, 6)
    (batch,) = iter_batches([{"input_ids": torch.zeros(3, 4, dtype=torch.long), "label": torch.ones(3)}],
                            num_samples=2, show_progress=False)
    assert batch["labels"].shape == (2,) and batch["input_ids"].shape == (2, 4)  # alias mapped, cut to num_samples
    limit = model.config.max_position_embeddings
    with pytest.raises(ValueError, match=f"sequence length of a batch={limit + 1} is longer"):
        list(iter_batches([torch.zeros(1, limit + 1, dtype=torch.long)], need_labels=False, positions_of=model))
    with pytest.raises(ValueError, match="yielded no batches"):
        list(iter_batches([], show_progress=False))
    with pytest.raises(TypeError, match="single batch dict"):
        list(iter_batches({"input_ids": torch.zeros(1, 2)}))


def test_one_definition_of_scopes():
    assert _definitions("SCOPES") == ["ranking.py"] and not _definitions("_SCOPES")


def test_one_capture_of_block_inputs():
    assert _definitions("capture_block_inputs") == ["budget/blocks.py", "passes/blocks.py"]
    source = (PACKAGE / "budget" / "blocks.py").read_text()
    assert "passes.capture_block_inputs(" in source and "register_forward_pre_hook" not in source


@pytest.mark.parametrize("place", ["passes", "criteria", "recovery", "sparsity/blockwise.py", "sparsity/criteria.py",
                                   "importance/layers.py", "importance/common.py", "budget/fisher.py",
                                   "calibration.py", "batchnorm.py", "lm_perplexity.py"])
def test_no_module_level_getattr(place):
    paths = [PACKAGE / place] if place.endswith(".py") else sorted((PACKAGE / place).glob("*.py"))
    for path in paths:
        tree = ast.parse(path.read_text())
        assert not any(isinstance(n, ast.FunctionDef) and n.name == "__getattr__" for n in tree.body), path


def test_library_bars_are_drawn_only_on_a_terminal(capsys, monkeypatch, caplog):
    """Scoring with `show_progress=True` into a pipe (stderr not a TTY): log lines, never a carriage return."""
    import io
    import logging

    import hfprune.passes.bars as progress_module

    model = make_model("bert")
    batches = [{"input_ids": torch.randint(0, model.config.vocab_size, (2, 8)), "labels": torch.tensor([0, 1])}
               for _ in range(3)]
    with caplog.at_level(logging.INFO, logger="hfprune"):
        hfprune.head_importance(model, batches, criterion="michel", show_progress=True)
    err = capsys.readouterr().err
    assert "\r" not in err
    assert any("started" in r.getMessage() for r in caplog.records)

    # On a terminal the same call draws a tqdm bar (carriage returns): the check above can fail.
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    fake = Terminal()
    monkeypatch.setattr(progress_module.sys, "stderr", fake)
    bar = progress_module.progress(3, "scoring", show=True)
    assert type(bar).__name__ != "_LogLines"
    bar.close()
