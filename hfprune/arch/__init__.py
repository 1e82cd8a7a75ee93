"""Model-family adapters, registered by `config.model_type`. Adding a family = one module here + its tests.

`base` is the contract every family shares, `transformer` the transformer paths (blocks, q/k/v/o, FFN), `channels`
the CNN channel groups; one module per family fills one of them in.
"""

from __future__ import annotations

from . import bert, convnext, distilbert, efficientnet, gpt2, llama, mobilenet_v2, moe, regnet, resnet, vit  # noqa: F401
from .base import ArchAdapter
from .channels import ChannelAdapter
from .registry import adapters_for, check_not_offloaded, get_adapter, register, supported_model_types, unwrap_model
from .transformer import ProjSegment, TransformerAdapter

__all__ = ["ArchAdapter", "ChannelAdapter", "ProjSegment", "TransformerAdapter", "adapters_for", "get_adapter",
           "register", "supported_model_types", "unwrap_model", "check_not_offloaded"]
