"""`add_remote_code`: make a saved pruned folder loadable by plain transformers, without hfprune installed."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..io.atomic import write_atomic
from ..structure import get_record
from .generate import MODELING_FILE, auto_class_names, auto_classes_for, class_spec, render, verify

_MODULE = Path(MODELING_FILE).stem


def add_remote_code(folder: str | os.PathLike) -> Path:
    """Write a self-contained modeling file into a pruned folder and register it in `config.json` (`auto_map`).

    Afterwards `AutoModelFor*.from_pretrained(folder, trust_remote_code=True)` (the Auto class of
    `config.architectures[0]`, and `AutoModel` for the base model) builds the pruned structure and loads the
    weights with only torch and transformers installed: non-uniform heads / FFN widths per layer, layers with no head
    left, removed layers, GQA with repeated KV heads and GPT-2 Conv1D all load. The folder stays loadable by
    `hfprune.load_pruned`. Running it again regenerates the file (after a further `prune` + save, for instance).

    The file is checked before it is written: every class it defines is built on the meta device and compared with
    hfprune's own rebuild (tensor shapes, module types, attributes).

    Args:
        folder (`str` or `os.PathLike`): a folder written by `save_pretrained` / `hfprune.save_pruned` after
            `hfprune.prune`.

    Returns:
        `Path`: the modeling file written (`folder/modeling_hfprune.py`).

    Raises:
        FileNotFoundError: `folder` or its `config.json` does not exist.
        ValueError: the config carries no hfprune record, names no transformers class, or already maps an Auto
            class to someone else's remote code. Nothing is written then.

    Example:
        ```python
        >>> hfprune.prune(model, plan)
        >>> hfprune.save_pruned(model, "out/pruned", tokenizer=tokenizer)
        >>> hfprune.add_remote_code("out/pruned")
        >>> # on a machine without hfprune:
        >>> AutoModelForSequenceClassification.from_pretrained("out/pruned", trust_remote_code=True)
        ```
    """
    import transformers
    from transformers import AutoConfig

    folder = Path(folder)
    config_path = folder / "config.json"
    if not folder.is_dir():
        raise FileNotFoundError(f"add_remote_code: {folder} is not a folder")
    if not config_path.is_file():
        raise FileNotFoundError(f"add_remote_code: {folder} has no config.json; save the pruned model there first")
    raw = json.loads(config_path.read_text())
    config = AutoConfig.from_pretrained(folder)
    record = get_record(config)
    if record is None:
        raise ValueError(
            f"add_remote_code: {config_path} has no 'hfprune' record, so the model was not pruned by hfprune "
            "(an unpruned model loads with plain from_pretrained already)"
        )
    arch = (getattr(config, "architectures", None) or [None])[0]
    if arch is None or not hasattr(transformers, arch):
        raise ValueError(f"add_remote_code: config.architectures={config.architectures!r} names no transformers "
                         "class; save the model with save_pretrained so that it is recorded")
    auto_map = {key: f"{_MODULE}.{arch}" for key in auto_classes_for(config.model_type, arch)}
    base = auto_class_names("AutoModel").get(config.model_type)
    classes = [arch]
    if isinstance(base, str) and base != arch and hasattr(transformers, base):
        classes.append(base)
        auto_map["AutoModel"] = f"{_MODULE}.{base}"
    if not auto_map:
        raise ValueError(f"add_remote_code: no transformers Auto class lists {arch} for model_type "
                         f"{config.model_type!r}, so no auto_map entry can point to it")
    foreign = {k: v for k, v in (raw.get("auto_map") or {}).items() if not str(v).startswith(f"{_MODULE}.")}
    if foreign:
        raise ValueError(f"add_remote_code: {config_path} already maps {foreign} to other remote code; hfprune "
                         "cannot combine its modeling file with it")

    # The structure the file was made for: per-layer specs, or a CNN's channel-group sizes.
    spec = {"record_layers": record.get("layers", record.get("channels")),
            "classes": {name: class_spec(getattr(transformers, name), config, record) for name in classes}}
    text = render(spec, classes)
    with tempfile.TemporaryDirectory(prefix="hfprune-remote-") as tmp:
        candidate = Path(tmp) / MODELING_FILE
        candidate.write_text(text)
        verify(candidate, config, record, classes)
    target = folder / MODELING_FILE
    write_atomic(target, text)
    # The file first, then the config that points to it: a reader never sees an auto_map without its file.
    raw["auto_map"] = auto_map
    write_atomic(config_path, json.dumps(raw, indent=2, sort_keys=True) + "\n")
    return target
