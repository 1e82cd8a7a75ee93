"""Surgery: slice weights and rewrite the config together."""

from .core import apply_structure, kv_layout, prune, remove_layers, reshape_attention, reshape_ffn
from .headless import HeadlessAttention

__all__ = ["HeadlessAttention", "apply_structure", "kv_layout", "prune", "remove_layers", "reshape_attention",
           "reshape_ffn"]
