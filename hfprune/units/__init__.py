"""Unit kinds: one module per kind of removable unit, registered by name (see `base` for the contract).

`heads`, `neurons`, `layers` and `hidden` are a transformer's units, `channels` a CNN's, `experts` a mixture of
experts'. `masking`, `surgery`, `structure`, `PruningPlan` and `compensation` dispatch over the kinds a family adapter
lists (`adapter.unit_kinds`). A new kind is one module here, added to `KINDS` below, plus the adapter entries it
reads (docs/architecture.md, "Adding a unit kind").
"""

from .base import UnitKind
from .channels import Channels
from .experts import Experts
from .gates import Gates, attach
from .heads import Heads
from .hidden import Hidden
from .layers import Layers
from .neurons import Neurons
from .registry import get_kind, kind_names, kinds_of, register, supported_kind

# The registered kinds, in the order of a plan's JSON keys and of `Gates.parameters()`.
KINDS = (Heads, Neurons, Layers, Channels, Hidden, Experts)
for _kind in KINDS:
    register(_kind)

__all__ = ["KINDS", "Gates", "UnitKind", "attach", "get_kind", "kind_names", "kinds_of", "register",
           "supported_kind"]
