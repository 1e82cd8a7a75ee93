"""Saving and loading pruned models: every on-disk format hfprune reads, and the one atomic writer.

- `formats`: `load_pruned` / `save_pruned`, and `FORMATS`, one loader per on-disk format (hfprune-structured,
  hfprune-sparse), chosen by looking at the folder (`detect_format`); nothing registers itself on import.
- `rebuild`: what every format shares once its tensors are read (model class, recorded structure, checkpoint
  names, strict loading, dtype).
- `folders`: a local folder for a path or Hub id (`resolve_folder`) and safetensors reading.
- `atomic`: `atomic_dir` / `write_atomic`, through which every folder and file hfprune writes goes (temporary
  sibling, fsync, swap with rollback, umask's mode); an existing folder is replaced only when hfprune wrote it
  (`is_hfprune_output`) or with `overwrite=True` (`check_output`).
- `stale`: which temporaries of earlier writes that died may be removed or recovered.
- `names`: the file names of the formats.

The remote-code export and the Hub push are in `hfprune.remote`; a GGUF file becomes a plain folder with
`gguf.convert_gguf`.
"""

from .atomic import atomic_dir, check_output, is_hfprune_output, replace_dir, write_atomic
from .folders import read_safetensors, require_safetensors, resolve_folder, safetensors_sizes
from .formats import FORMATS, DiskFormat, detect_format, load_pruned, save_pruned
from .rebuild import build_model, load_state_strict, model_class_for, to_model_keys

__all__ = [
    "FORMATS",
    "DiskFormat",
    "atomic_dir",
    "build_model",
    "check_output",
    "detect_format",
    "is_hfprune_output",
    "load_pruned",
    "load_state_strict",
    "model_class_for",
    "read_safetensors",
    "replace_dir",
    "require_safetensors",
    "resolve_folder",
    "safetensors_sizes",
    "save_pruned",
    "to_model_keys",
    "write_atomic",
]
