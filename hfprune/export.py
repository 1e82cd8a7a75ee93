"""Compatibility module: the older import path of `hfprune.io` (`from hfprune.export import load_pruned, atomic_dir`).

New code imports from `hfprune.io` (or `hfprune` itself); this module only re-exports, so that code written against
the earlier layout keeps working.
"""

from .io import (
    atomic_dir,
    load_pruned,
    load_state_strict,
    model_class_for,
    read_safetensors,
    replace_dir,
    resolve_folder,
    save_pruned,
    to_model_keys,
    write_atomic,
)

__all__ = [
    "atomic_dir",
    "load_pruned",
    "load_state_strict",
    "model_class_for",
    "read_safetensors",
    "replace_dir",
    "resolve_folder",
    "save_pruned",
    "to_model_keys",
    "write_atomic",
]
