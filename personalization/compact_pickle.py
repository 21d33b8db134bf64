"""Cheaper pickling for ``slots`` dataclasses, the records and keyed state of the job.

PyFlink pickles every record passed between Python operators and every keyed-state
value on each update. A ``@dataclass(slots=True)`` pickles through the ``__getstate__``
/ ``__setstate__`` that ``dataclasses`` generates, which call ``dataclasses.fields()``
on every object (in the ingest profile: 18 calls per event). :func:`compact_pickle`
replaces them with ones over the field names computed once per class.

The state is the same list of field values in declaration order that ``dataclasses``
writes for frozen classes, so their bytes load with either version. A non-frozen slots
class is pickled by Python as ``(None, {slot: value})``; ``__setstate__`` accepts that
form too, so keyed state from checkpoints written before a class was decorated loads.
Fields appended to a class later load from older (shorter) states with their defaults,
so a new job version restores the keyed state of the one before.
"""

from __future__ import annotations

import dataclasses
import operator
from typing import Any, TypeVar

_C = TypeVar("_C", bound=type)


def compact_pickle(cls: _C) -> _C:
    """Class decorator, applied above ``@dataclass(slots=True)``."""
    if not dataclasses.is_dataclass(cls) or "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__}: compact_pickle needs a slots dataclass")
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    if not names:
        raise TypeError(f"{cls.__name__}: no fields to pickle")
    # (name, default maker) of each field, for states written before it was appended.
    defaults: list[tuple[str, Any]] = []
    for f in fields:
        if f.default is not dataclasses.MISSING:
            defaults.append((f.name, lambda value=f.default: value))
        elif f.default_factory is not dataclasses.MISSING:
            defaults.append((f.name, f.default_factory))
        else:
            defaults.append((f.name, None))
    get = operator.attrgetter(*names)
    setter = object.__setattr__  # frozen dataclasses refuse setattr

    if len(names) == 1:  # attrgetter of one name returns the value, not a tuple

        def __getstate__(self: Any) -> list[Any]:
            return [get(self)]

    else:

        def __getstate__(self: Any) -> list[Any]:
            return list(get(self))

    def _setstate_any(self: Any, state: list[Any] | tuple[Any, dict[str, Any] | None]) -> None:
        if isinstance(state, tuple):
            # Python's default form for a non-frozen slots class, (None, {slot: value}):
            # keyed state pickled before the class was decorated (in checkpoints).
            given = state[1] or {}
            for name, value in given.items():
                setter(self, name, value)
            for name, make in defaults:
                if name not in given and make is not None:
                    setter(self, name, make())
            return
        if len(state) > len(names):
            raise ValueError(f"{cls.__name__}: {len(state)} values for {len(names)} fields")
        for name, value in zip(names, state, strict=False):
            setter(self, name, value)
        for name, make in defaults[len(state) :]:
            if make is None:
                raise ValueError(f"{cls.__name__}: no value and no default for {name!r}")
            setter(self, name, make())

    # The common case, a state of this very layout, as one generated function that
    # sets each slot through its descriptor: unpickling the user state sets ~50 slots
    # per event, and a Python loop of setattr calls was a third of its cost.
    setters = {f"_set{i}": cls.__dict__[name].__set__ for i, name in enumerate(names)}
    body = "\n".join(f"        _set{i}(self, state[{i}])" for i in range(len(names)))
    source = (
        "def __setstate__(self, state):\n"
        f"    if type(state) is list and len(state) == {len(names)}:\n"
        f"{body}\n"
        "        return\n"
        "    _setstate_any(self, state)\n"
    )
    namespace: dict[str, Any] = {"_setstate_any": _setstate_any, **setters}
    exec(source, namespace)  # built above from field positions only
    __setstate__ = namespace["__setstate__"]
    __setstate__.__qualname__ = f"{cls.__qualname__}.__setstate__"

    cls.__getstate__ = __getstate__  # type: ignore[method-assign,attr-defined]
    cls.__setstate__ = __setstate__  # type: ignore[method-assign,attr-defined]
    return cls
