"""Keep-alive and upkeep: the reaper thread that unloads idle models, and the limits kept as the books change.

The other parts call the :class:`Upkeep` hooks, with no lock held, when
something happened that may let a deferred eviction go ahead (a lease ended,
a pin was lifted, a load turned out heavier than its estimate) or that
changes what the :class:`Reaper` must watch (settings, a new load).
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Any, Protocol

from ..errors import log_failure
from ..events import EventBus
from .evictions import Evictions
from .instances import Instance
from .state import Books

__all__ = ["Reaper", "Upkeep"]

log = logging.getLogger(__name__)


class Upkeep:
    """Settings changes, and the evictions and reaper wake-ups that follow changes."""

    def __init__(self, books: Books, bus: EventBus, evictions: Evictions) -> None:
        self._books = books
        self._bus = bus
        self._evictions = evictions
        self.reaper = Reaper(evictions)

    def configure(self, values: dict[str, Any]) -> None:
        """Apply validated settings at once, tell subscribers, and restore the (maybe lowered) limits."""
        books = self._books
        with books.lock:
            books.settings = books.settings.with_values(values)
            books.touch()
        self._bus.emit("settings_changed", message=", ".join(f"{k} = {v}" for k, v in values.items()))
        self.reaper.wake()
        self.ensure_reaper()
        self._evictions.enforce()

    def after_idle(self, instance: Instance) -> None:
        """An instance's last lease ended: its keep-alive starts; deferred limits may apply now."""
        self.reaper.wake()
        if instance.key in self._books.retiring:
            self.retire(instance.key)
        if self._books.limits_pending:
            self._evictions.enforce()

    def retire(self, key: str | None) -> None:
        """Unload a task's previous option now if idle, else when its last lease ends (see ``after_idle``)."""
        if key is None:
            return
        books = self._books
        with books.lock:
            instance = books.instances.get(key)
            if instance is None:
                books.retiring.discard(key)
                return
            if instance.leases or instance.state != "loaded" or key not in books.retiring:
                return  # in use (or loading): its last lease ends it
            books.retiring.discard(key)
        self._evictions.unload(key, books.deadline(0), quiet=True)

    def after_load(self, instance: Instance, heavier: bool) -> None:
        self.ensure_reaper()
        if heavier or self._books.limits_pending:
            self._evictions.enforce(spare=instance.key)

    def after_unpin(self, pending: bool) -> None:
        if pending:
            self._evictions.enforce()

    def ensure_reaper(self) -> None:
        """Start the keep-alive thread once some keep-alive is set."""
        books = self._books
        with books.lock:
            wanted = not books.closed and (books.settings.keep_alive is not None or any(
                s.keep_alive is not None for s in books.registry.specs.values()))
        if wanted:
            self.reaper.start()


# -- the reaper: one thread unloads idle models when their keep-alive runs out ---------------

_MAX_SLEEP_S = 60.0


class Expiring(Protocol):
    def expire(self) -> object: ...

    def next_expiry(self) -> float | None: ...


class Reaper:
    """Starts its thread on first :meth:`start`; :meth:`wake` after changes; :meth:`stop` to end it."""

    def __init__(self, target: Expiring) -> None:
        self._target = weakref.ref(target)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        weakref.finalize(target, self._wake.set)  # collected: let the thread see it and end

    def start(self) -> None:
        with self._lock:
            if self._thread is not None or self._stop.is_set():
                return
            self._thread = threading.Thread(target=_run, args=(self._target, self._wake, self._stop),
                                            name="llm-manager-keep-alive", daemon=True)
            self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        with self._lock:
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()


def _run(target: weakref.ref[Expiring], wake: threading.Event, stop: threading.Event) -> None:
    """The thread: expire what is due, sleep until the next expiry or a wake-up; never holds the target."""
    while not stop.is_set():
        wake.clear()
        found = target()
        if found is None:
            return
        try:
            delay = found.next_expiry()
            if delay is not None and delay <= 0:
                found.expire()
                delay = found.next_expiry()
        except Exception as error:  # noqa: BLE001 - the reaper must survive, and say so in one line
            log_failure(log, "the keep-alive reaper failed; it keeps running", error)
            delay = _MAX_SLEEP_S
        del found
        wake.wait(_MAX_SLEEP_S if delay is None else min(delay, _MAX_SLEEP_S))
