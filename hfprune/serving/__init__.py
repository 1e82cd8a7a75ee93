"""Pruned models in the forms serving stacks load: plain configs, compressed-tensors int8/int4 weights."""

from __future__ import annotations

from .plain import LoadsAs, original_config, plain_config

__all__ = ["LoadsAs", "export_compressed_tensors", "original_config", "plain_config"]


def __getattr__(name: str):
    if name == "export_compressed_tensors":  # compressed-tensors is optional: imported when asked for
        from .compressed_tensors import export_compressed_tensors

        return export_compressed_tensors
    raise AttributeError(f"module 'hfprune.serving' has no attribute {name!r}")
