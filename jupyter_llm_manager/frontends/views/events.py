"""The manager's recent events (``manager.events()``) as one table: the dashboard's "Events"."""

from __future__ import annotations

import time
from collections.abc import Sequence

from ...events import Event
from .table import Column, Table

__all__ = ["events_table"]


def events_table(events: Sequence[Event]) -> Table:
    """The most recent first, each with its time, model, what happened, how long and how many bytes."""
    rows = [[time.strftime("%H:%M:%S", time.localtime(e.time)), e.model_id or "",
             e.kind + (f" ({e.reason})" if e.reason else ""), f"{e.seconds:.2f} s" if e.seconds is not None else "",
             e.bytes_str, e.message[:300]] for e in reversed(events)]
    return Table([Column("time"), Column("model"), Column("what"), Column("seconds", 2), Column("bytes", 1),
                  Column("message")], rows)
