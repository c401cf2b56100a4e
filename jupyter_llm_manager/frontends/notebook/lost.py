"""Models this kernel lost where no cell showed it: said once, in the next ``%%llm`` footer.

An eviction that a cell caused is in that cell's footer. One that happened
elsewhere — another notebook asked for the room, the keep-alive ran out, a
request in another thread needed the room — or an unload another notebook
asked for (its JupyterLab panel) is only in the manager's events
(the dashboard's history); the next cell says it once: ``smollm2 was evicted
by other.ipynb to make room, 2 min ago; it will load again``. The manager's
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

__all__ = ["LostModels", "lost_note"]

#: Why a model was evicted, as the note says it (``other_kernel`` names the notebook that asked).
_WHY = {
    "lru": "to make room for another model (least recently used)",
    "budget": "to keep within the memory budget",
    "keep_alive": "when its keep-alive ran out",
}


def lost_note(event: Event, now: float | None = None) -> str:
    """``smollm2 was evicted by other.ipynb to make room, 2 min ago; it will load again``."""
    if event.kind == "unloaded":  # another notebook asked (its JupyterLab panel)
        requester = event.message.removeprefix("for ").strip()
        return f"{event.model_id} was unloaded by {requester}, {_ago((now or time.time()) - event.time)}; it will " \
               "load again"
    if event.reason == "other_kernel":
        requester = event.message.removeprefix("for ").strip() or "another notebook"
        why = f"by {requester} to make room"
    else:
        why = _WHY.get(event.reason or "", f"({event.reason})")
    return f"{event.model_id} was evicted {why}, {_ago((now or time.time()) - event.time)}; it will load again"


def _ago(seconds: float) -> str:
    if seconds < 5:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"


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
            lost = [e for e in fresh if e.model_id and id(e) not in self._told and _lost(e)]
            self._told = {id(e) for e in events if id(e) in self._told}  # forget what left the history
        now = time.time()
        return [lost_note(event, now) for event in lost]


def _lost(event: Event) -> bool:
    """An eviction, or an unload another notebook asked for (this notebook's own unloads it knows of)."""
    return event.kind == "evicted" or (event.kind == "unloaded" and event.message.startswith("for "))


def _after(events: Sequence[Event], last: Event | None) -> Sequence[Event]:
    """The events that came after ``last`` (all of them when it is unknown or left the history)."""
    if last is None:
        return events
    for index in range(len(events) - 1, -1, -1):
        if events[index] is last:
            return events[index + 1:]
    return events
