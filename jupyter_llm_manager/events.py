"""Manager events: small frozen records, and the bus that delivers them.

Subscribers get every event synchronously, in the thread that caused it,
never while a manager lock, a lease or a section that holds Ctrl-C back is
held: the parts emit inside :meth:`EventBus.held` where they hold one, and
the events are delivered when it ends. So a subscriber may call back into
the manager, from the same thread or another; a slow one delays only its own
thread, and a Ctrl-C during it interrupts at once. A subscriber that raises
is logged and kept. Messages are bounded excerpts (500 characters). The bus
also keeps the last events so a dashboard opened later can show history.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from .errors import log_failure
from .support.units import bytes_text, excerpt

__all__ = ["Event", "EventBus", "EventKind", "EvictionReason"]

log = logging.getLogger(__name__)

EventKind = Literal[
    "registered", "unregistered", "waiting", "loading", "load_progress", "loaded", "load_failed", "evicted", "unloaded",
    "made_room", "generation_started", "generation_finished", "pinned", "unpinned", "settings_changed", "warning",
    "borrowing", "lending",
]
EvictionReason = Literal["lru", "budget", "other_kernel", "keep_alive", "manual"]


@dataclass(frozen=True)
class Event:
    """Something that happened to a model (or the manager when ``model_id`` is None).

    ``made_room``: another kernel evicted one of its models for this model's request (``message`` names it and
    the notebook, ``bytes`` what came back); the holder's own event is ``evicted`` (``other_kernel``).
    """

    kind: EventKind
    model_id: str | None = None
    reason: EvictionReason | None = None
    seconds: float | None = None
    bytes: int | None = None
    message: str = ""
    time: float = 0.0  # wall clock, for display
    position: int | None = None  # for "waiting": the place of its model in the queue (1 = next)
    arrival: int | None = None  # for "waiting" and "loading": the arrival number of the model's first waiter

    bytes_str = bytes_text("bytes")

    def __str__(self) -> str:
        parts = [self.kind, repr(self.model_id) if self.model_id else ""]
        if self.reason:
            parts.append(f"({self.reason})")
        if self.seconds is not None:
            parts.append(f"{self.seconds:.2f} s")
        if self.bytes is not None:
            parts.append(self.bytes_str)
        if self.position is not None:
            parts.append(f"#{self.position}")
        if self.message:
            parts.append(f"— {self.message}")
        return " ".join(p for p in parts if p)


Subscriber = Callable[[Event], object]


class EventBus:
    """Delivers events to subscribers and remembers the recent ones."""

    def __init__(self, history: int = 200) -> None:
        self._lock = threading.Lock()
        self._subscribers: list[Subscriber] = []
        self._history: deque[Event] = deque(maxlen=history)
        self._held = threading.local()  # per thread: how deep in held(), and the events it holds

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Call ``callback(event)`` for every event; returns a function that stops it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def emit(self, kind: EventKind, model_id: str | None = None, *, reason: EvictionReason | None = None,
             seconds: float | None = None, bytes: int | None = None, message: str = "",
             position: int | None = None, arrival: int | None = None) -> Event:
        """Record an event and deliver it now, or when this thread's :meth:`held` section ends."""
        event = Event(kind, model_id, reason, seconds, bytes, excerpt(message), time.time(), position, arrival)
        with self._lock:
            self._history.append(event)
        log.debug("event: %s", event)
        if getattr(self._held, "depth", 0):
            self._held.events.append(event)
        else:
            self._deliver(event)
        return event

    @contextmanager
    def held(self) -> Iterator[None]:
        """Events this thread emits inside are delivered, in order, once the outermost section ends.

        For the steps that must not run a subscriber: while Ctrl-C is held
        back, while a lease the caller did not ask for is held. Delivered
        also when the section ends with an exception (they happened).
        """
        state = self._held
        if not getattr(state, "depth", 0):
            state.depth, state.events = 0, []
        state.depth += 1
        try:
            yield
        finally:
            state.depth -= 1
            if not state.depth:
                events, state.events = state.events, []
                for event in events:
                    self._deliver(event)

    def _deliver(self, event: Event) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(event)
            except Exception as error:  # noqa: BLE001 - a subscriber's bug must not break the manager
                log_failure(log, f"an event subscriber failed on {event}", error)

    def recent(self, limit: int | None = None) -> list[Event]:
        with self._lock:
            events = list(self._history)
        return events[-limit:] if limit else events

