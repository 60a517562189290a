"""Recovery snapshots across releases: a slotted dataclass pickled by an earlier release
restores with the fields added since at their defaults.

The engine's state (``engine.shard.Shard``, the sinks' undelivered records) is pickled whole
into Bytewax's recovery store. Pickle restores an object by handing its ``__setstate__`` the
state the object's release wrote; for a slotted dataclass that state lists only the fields
that release had, so without help a field added since stays unset and the first read of it
raises ``AttributeError`` (at the first event that needs it, not at the restore). A frozen
dataclass pickles a list of its field values, in field order (``dataclasses`` zips it with
today's fields); a mutable one the pair ``(None, {field: value})``.

:func:`restore_fields` is the ``__setstate__`` of every slotted dataclass the state holds
(``__setstate__ = restore_fields`` in the class body): it takes either form and gives every
field missing from it its default. The rule that keeps this sound: **a field added to such a
class goes last, with a default** (a list's values are matched to the fields by position);
a field without a default cannot be restored and says so.

>>> from dataclasses import dataclass, field
>>> @dataclass(frozen=True, slots=True)
... class Pending:
...     action_id: str
...     reward: float | None = None
...     groups: tuple[str, ...] = ()  # added in a later release
...     __setstate__ = restore_fields
>>> old = Pending.__new__(Pending)
>>> old.__setstate__(["offer_fund", 0.3])  # what the earlier release pickled
>>> old
Pending(action_id='offer_fund', reward=0.3, groups=())
>>> @dataclass(slots=True)
... class State:
...     sent: list[float] = field(default_factory=list)
...     fair_window: int = -1  # added in a later release
...     __setstate__ = restore_fields
>>> old = State.__new__(State)
>>> old.__setstate__((None, {"sent": [1.0]}))
>>> old
State(sent=[1.0], fair_window=-1)
"""

from __future__ import annotations

from dataclasses import MISSING, fields
from typing import Any


def restore_fields(self: Any, state: list[Any] | tuple[None, dict[str, Any]] | dict[str, Any]) -> None:
    """``__setstate__`` of a slotted dataclass: the fields in ``state`` (a frozen one's list of
    values, a mutable one's ``(None, {name: value})``), the rest at their defaults."""
    if isinstance(state, tuple):
        state = state[1]
    every = fields(self)
    values = state if isinstance(state, dict) else {f.name: value for f, value in zip(every, state, strict=False)}
    for f in every:
        if f.name in values:
            value = values[f.name]
        elif f.default is not MISSING:
            value = f.default
        elif f.default_factory is not MISSING:
            value = f.default_factory()
        else:
            raise TypeError(f"{type(self).__qualname__}: the pickled state has no {f.name!r} and the field "
                            f"has no default to restore it with")
        object.__setattr__(self, f.name, value)
