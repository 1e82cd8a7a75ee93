"""Pruned models in the forms serving stacks load: plain configs, compressed-tensors int8/int4 weights.

The optional `compressed-tensors` package is imported by `export_compressed_tensors` when it runs, not here.
"""

from __future__ import annotations

from .compressed_tensors import export_compressed_tensors
from .plain import LoadsAs, original_config, plain_config

__all__ = ["LoadsAs", "export_compressed_tensors", "original_config", "plain_config"]
