"""Selection: importance scores -> `PruningPlan`.

`per_layer`: heads, FFN neurons and layers by ratio or count, over the model or within each layer; `uniform`: the
same structure in every layer (a plain config); `groups`: channels per channel group (grouped convolutions in whole
runs); `hidden`: residual-stream channels; `experts`: MoE experts by ratio, uniform or over all layers;
`iterative`: Michel et al.'s mask-and-rescore loop.
"""

from .experts import select_experts
from .groups import select_channels
from .hidden import select_hidden
from .iterative import iterative_head_pruning
from .per_layer import select_heads, select_layers, select_neurons

__all__ = ["iterative_head_pruning", "select_channels", "select_experts", "select_heads", "select_hidden",
           "select_layers",
           "select_neurons"]
