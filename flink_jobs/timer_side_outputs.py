"""Side outputs from ``on_timer`` of a keyed broadcast function (a PyFlink gap, bridged).

PyFlink's embedded (thread mode) runtime routes what a function yields through
``process_func``, which sends ``(OutputTag, value)`` pairs to their side outputs. For a
``KeyedBroadcastProcessFunction`` it skips that for ``on_timer`` (PyFlink 2.x,
``pyflink/fn_execution/datastream/embedded/operations.py``, the
``KEYED_CO_BROADCAST_PROCESS`` branch: ``yield from on_timer(...)``): a pair yielded by a
timer reaches the main output's serializer and fails (a ClassCastException). Every
other keyed function, and this one's ``process_element``, route them.

The side-output context ``process_func`` uses is the same object for the life of the
operator. While a function's ``process_element`` generator runs, the frame that resumed
it is ``process_func``, whose closure holds that context: :func:`find` takes it from
there once, so a timer can send to a side output itself (:class:`TimerSideOutputs`).
When the runtime's layout differs (another PyFlink version, process mode), :func:`find`
returns None and the caller keeps to what works without it.
"""

from __future__ import annotations

import sys
from types import FrameType
from typing import Any

from pyflink.datastream import OutputTag

__all__ = ["TimerSideOutputs", "find"]

# How far up from find's caller to look: process_func resumed the function's generator,
# a call or two above (the generator body, a helper of the operator).
_MAX_DEPTH = 6


def find() -> Any | None:
    """The runtime's side-output context, when called (directly or through a helper)
    from a ``process_element`` generator running in PyFlink's embedded runtime; else
    None."""
    frame: FrameType | None = sys._getframe(1)
    for _ in range(_MAX_DEPTH):
        if frame is None:
            return None
        if frame.f_code.co_name == "process_func" and "pyflink" in frame.f_code.co_filename:
            context = frame.f_locals.get("side_output_context")
            return context if callable(getattr(context, "collect", None)) else None
        frame = frame.f_back
    return None


class TimerSideOutputs:
    """Sends a timer's records to side outputs through the runtime's own context."""

    def __init__(self, context: Any) -> None:
        self._context = context

    def collect(self, tag: OutputTag, value: Any) -> None:
        self._context.collect(tag.tag_id, value)
