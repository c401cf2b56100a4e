"""Warm-up: the ``preload`` models loaded in the background when the manager starts (as Ollama and LM Studio do).

In order, one after another, on one thread named ``llm-manager-warmup``, so
the kernel is free at once. The loads go through admission like any other:
the limits hold, and torch and transformers are imported behind the import
guard, so no other thread sees them half imported. A failure is an event and
a notice (the next ``%%llm`` or ``%llm`` cell shows it once), never an
exception in the user's first cell. ``close()`` stops it after the load in
flight.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from ...errors import LLMManagerError
from ...events import EventBus

__all__ = ["WarmUp", "WarmUpStatus"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WarmUpStatus:
    """Where the warm-up is: what it loads, in order, what is done, what failed and why."""

    models: tuple[str, ...] = ()
    loaded: tuple[str, ...] = ()
    failed: dict[str, str] = field(default_factory=dict)
    current: str | None = None
    running: bool = False

    def __str__(self) -> str:
        if not self.models:
            return "no warm-up (no model is marked preload)"
        done = len(self.loaded) + len(self.failed)
        text = f"warm-up {done}/{len(self.models)}"
        if self.current:
            text += f": loading {self.current}"
        if self.failed:
            text += f"; failed: {', '.join(self.failed)}"
        return text


class WarmUp:
    """Loads a list of models in the background, in order, through ``load``."""

    def __init__(self, load: Callable[[str], object], bus: EventBus) -> None:
        self._load = load
        self._bus = bus
        self._lock = threading.Lock()
        self._status = WarmUpStatus()
        self._notices: list[str] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def status(self) -> WarmUpStatus:
        with self._lock:
            return self._status

    def start(self, model_ids: list[str], deferred: list[str] | None = None) -> None:
        """Warm these models up, in this order; ``deferred`` ones are said to load at first use."""
        if deferred:
            with self._lock:
                self._notices.append(f"not warmed up, as they run code or contact a server (loader, "
                                     f"trust_remote_code, a server or the Hub): {', '.join(deferred)}; they load "
                                     "at first use")
        if not model_ids:
            return
        with self._lock:
            self._status = WarmUpStatus(tuple(model_ids), running=True)
        self._thread = threading.Thread(target=self._run, args=(list(model_ids),), name="llm-manager-warmup",
                                        daemon=True)
        self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the warm-up to end (``timeout`` seconds at most); whether it has ended."""
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
        return not self.status.running

    def stop(self, timeout: float = 30.0) -> None:
        """No new load starts; waits (up to ``timeout``) for the one in flight."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def take_notices(self) -> list[str]:
        """What went wrong since the last call, each said once (for the next cell)."""
        with self._lock:
            notices, self._notices = self._notices, []
        return notices

    def _run(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            if self._stop.is_set():
                break
            self._update(current=model_id)
            try:
                self._load(model_id)
            except (LLMManagerError, OSError) as error:
                self._failed(model_id, str(error))
            except Exception as error:  # noqa: BLE001 - a loader's own bug: said, never raised in a user's cell
                self._failed(model_id, f"{type(error).__name__}: {error}")
            else:
                with self._lock:
                    self._status = _with(self._status, loaded=(*self._status.loaded, model_id))
        self._update(current=None, running=False)

    def _failed(self, model_id: str, why: str) -> None:
        message = f"warm-up could not load {model_id!r}: {why}"
        log.debug("%s", message)
        with self._lock:
            self._status = _with(self._status, failed={**self._status.failed, model_id: why})
            self._notices.append(message)
        self._bus.emit("warning", model_id, message=message)

    def _update(self, **changes: object) -> None:
        with self._lock:
            self._status = _with(self._status, **changes)


def _with(status: WarmUpStatus, **changes: object) -> WarmUpStatus:
    from dataclasses import replace

    return replace(status, **changes)  # type: ignore[arg-type]
