"""What every scoring callback shares: configuration checks, finding the scoring data, and writing results.

Data resolution, in order: a DataLoader or list of batch dicts given to the callback is used as it is; a dataset
given to the callback goes through `trainer.get_eval_dataloader(dataset)` when the callback is bound to the trainer
(`trainer=` or `.bind(trainer)`: same collator, column removal and per-process sharding as evaluation), else through
a DataLoader with a padding collator built from the trainer's `processing_class`; with no data given, the trainer's
eval dataloader is used (`trainer.get_eval_dataloader()` when bound, else the one the Trainer built for its last
evaluation). `PruningCallback` differs when no data is given: it scores on a seeded slice of the training set
(`scoring_data.py`), and reads the eval dataset only when asked to.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..io.atomic import write_atomic


def check_choice(owner: str, name: str, value, choices) -> None:
    if value not in choices:
        raise ValueError(f"{owner}: {name} must be one of {tuple(choices)}, got {value!r}")


def check_positive(owner: str, name: str, value) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value <= 0):
        raise ValueError(f"{owner}: {name} must be a positive integer or None, got {value!r}")


def build_config(config_cls, owner: str, options: dict):
    """Instantiate a config dataclass from keyword options; an unknown option is an error that names it."""
    names = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise TypeError(f"{owner}: unknown option {unknown[0]!r} (valid: {', '.join(sorted(names))})")
    return config_cls(**options)


def _is_batches(data) -> bool:
    if isinstance(data, torch.utils.data.DataLoader):
        return True
    return isinstance(data, (list, tuple)) and bool(data) and isinstance(data[0], Mapping) and \
        any(isinstance(v, torch.Tensor) and v.dim() > 1 for v in data[0].values())


def _model_columns(model: nn.Module) -> set[str]:
    params = set(inspect.signature(model.forward).parameters)
    return params | {"label", "label_ids", "labels"}


def dataloader_for(owner: str, data, trainer, kwargs: dict, args):
    """The batches a callback scores on (see the module docstring for the order)."""
    if data is not None and _is_batches(data):
        return data
    if trainer is not None:
        return trainer.get_eval_dataloader(data) if data is not None else trainer.get_eval_dataloader()
    if data is None:
        loader = kwargs.get("eval_dataloader")
        if loader is None:
            raise ValueError(
                f"{owner}: no data to score on. Pass dataset=... (a dataset, DataLoader or list of batch dicts), "
                "or bind the trainer (trainer=trainer or callback.bind(trainer)) to use its eval dataset"
            )
        return loader
    from transformers import DataCollatorWithPadding, default_data_collator

    model = kwargs.get("model")
    if hasattr(data, "column_names") and hasattr(data, "remove_columns") and model is not None:
        extra = [c for c in data.column_names if c not in _model_columns(model)]
        data = data.remove_columns(extra) if extra else data
    processing = kwargs.get("processing_class")
    collate = DataCollatorWithPadding(processing) if hasattr(processing, "pad") else default_data_collator
    return torch.utils.data.DataLoader(data, batch_size=args.per_device_eval_batch_size, collate_fn=collate)


def to_jsonable(value):
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        return [to_jsonable(v) for v in value] if value.dim() else (None if value.isnan() else float(value))
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def write_section(output_dir: str | os.PathLike, name: str, section: str, payload: dict) -> Path:
    """Set `section` of the JSON file `output_dir/name` to `payload`, keeping the other sections.

    Several callbacks share one `importance.json` ("heads", "neurons", "layers", "pruning"). The file is written
    atomically (`hfprune.io.write_atomic`: a temporary file in the same folder, renamed over the old one) and, when
    new, gets the umask's mode like every other output.
    """
    folder = Path(output_dir)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    data = {}
    if target.exists():
        try:
            data = json.loads(target.read_text())
        except json.JSONDecodeError:
            data = {}
        data = data if isinstance(data, dict) else {}
    data[section] = to_jsonable(payload)
    return write_atomic(target, json.dumps(data, indent=2))
