"""Models this kernel lost where no cell showed it: said once, in the next ``%%llm`` footer.

An eviction that a cell caused is in that cell's footer. One that happened
elsewhere — another notebook asked for the room, the keep-alive ran out, a
request in another thread needed the room — or an unload another notebook
asked for (its JupyterLab panel) is only in the manager's events
(the dashboard's history); the next cell says it once (:mod:`..views.lost`
words it). The manager's
event history is read from where the previous cell left off, so evictions
before the first cell count too.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Sequence

from ...events import Event
from ...manager.facade import LLMManager
from ..views.lost import is_loss, loss_note

__all__ = ["LostModels"]

class LostModels:
    """Evictions not yet told in a cell, read from the manager's event history (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._manager: weakref.ref[LLMManager] | None = None
        self._last: Event | None = None  # the last event a cell has looked at
        self._told: set[int] = set()  # ids of evictions a cell's footer already showed

    def told(self, event: Event) -> None:
        """A cell showed this eviction (it caused it): no note about it later."""
        with self._lock:
            self._told.add(id(event))

    def news(self, manager: LLMManager) -> list[str]:
        """The notes about evictions since the previous cell that no cell showed; each is said once."""
        events = manager.events(None)
        with self._lock:
            if self._manager is None or self._manager() is not manager:
                self._manager, self._last, self._told = weakref.ref(manager), None, set()
            fresh = _after(events, self._last)
            self._last = events[-1] if events else self._last
            lost = [e for e in fresh if id(e) not in self._told and is_loss(e)]
            self._told = {id(e) for e in events if id(e) in self._told}  # forget what left the history
        now = time.time()
        return [loss_note(event, now) for event in lost]


def _after(events: Sequence[Event], last: Event | None) -> Sequence[Event]:
    """The events that came after ``last`` (all of them when it is unknown or left the history)."""
    if last is None:
        return events
    for index in range(len(events) - 1, -1, -1):
        if events[index] is last:
            return events[index + 1:]
    return events
