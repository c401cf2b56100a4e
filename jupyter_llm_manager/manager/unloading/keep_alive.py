"""Keep-alive: the reaper thread that unloads idle models when their keep-alive runs out.

It holds its target weakly and ends once the target is collected; :class:`~.limits.Limits` starts and wakes it.
"""

from __future__ import annotations

import logging
import threading
import weakref
from typing import Protocol

from ...errors import log_failure

__all__ = ["Reaper"]

log = logging.getLogger(__name__)


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
