"""`HEAD_CRITERIA` and `NEURON_CRITERIA`: the criterion names of one unit kind, read from the registry at every use."""

from __future__ import annotations

from collections.abc import Sequence

from ..criteria import criterion_names


class RegisteredNames(Sequence):
    """The names registered in `hfprune.criteria` for one unit kind, in listing order.

    Read afresh at every use, so a criterion registered after import is listed too, and importing this module does
    not import every criterion module. Compares equal to the tuple `criterion_names(unit)`.

    Example:
        ```py
        >>> from hfprune.importance import HEAD_CRITERIA
        >>> "michel" in HEAD_CRITERIA
        True
        ```
    """

    def __init__(self, unit: str):
        self.unit = unit

    def _names(self) -> tuple[str, ...]:
        return criterion_names(self.unit)

    def __getitem__(self, index):
        return self._names()[index]

    def __len__(self) -> int:
        return len(self._names())

    def __eq__(self, other) -> bool:
        if isinstance(other, (tuple, list, RegisteredNames)):
            return self._names() == tuple(other)
        return NotImplemented

    __hash__ = None  # it changes when a criterion is registered

    def __repr__(self) -> str:
        return repr(self._names())


HEAD_CRITERIA = RegisteredNames("heads")
NEURON_CRITERIA = RegisteredNames("neurons")
