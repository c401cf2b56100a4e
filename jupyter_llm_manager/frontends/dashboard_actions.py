"""What the dashboard's clicks do: each a shared action (:mod:`.actions`) on a short-lived thread.

While one runs, its row (or the dashboard, for actions on every model)
shows what it does and what it waits for; then its outcome, timed, in the
messages area. A button's Unload of a model in use waits for the answer to
end however long it runs; a second click takes it back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from ..errors import LLMManagerError, log_failure
from . import actions
from .views.plan import plan_tables

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["DashboardActions"]

log = logging.getLogger(__name__)

_JOIN_S = actions.ACTION_WAIT_S + 5.0  # the longest an action waits, and a margin


class DashboardActions:
    """Runs the dashboard's actions; keeps what is pending (by model id, ``""`` for all), the last messages and
    the last plan. ``changed`` wakes the dashboard's writer; ``background=False`` runs each action at once
    and then ``after`` (tests and scripted use)."""

    def __init__(self, manager: LLMManager, changed: Callable[[], None], *, background: bool,
                 after: Callable[[], None]) -> None:
        self.manager = manager
        self._changed = changed
        self._background = background
        self._after = after
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}
        self._messages: deque[tuple[float, bool, str]] = deque(maxlen=5)  # (time, failed, text)
        self._threads: list[threading.Thread] = []
        self._unloads = actions.WaitingUnloads()
        self._plan_html = ""

    def state(self) -> tuple[dict[str, str], list[tuple[float, bool, str]], str]:
        """What is pending, the last messages and the last plan (HTML), as they are now."""
        with self._lock:
            return dict(self._pending), list(self._messages), self._plan_html

    def load(self, model_id: str) -> None:
        self.submit(model_id, "loading", lambda: actions.load(self.manager, model_id))

    def unload(self, model_id: str) -> None:
        """Unload once the model is released, however long its answer runs; a second click takes it back."""
        unload = self._unloads.start(self.manager, model_id)
        if unload is not None and not self.submit(model_id, "unloading", unload):
            self._unloads.cancel(model_id)  # another action on it runs: this click did nothing

    def toggle_pin(self, model_id: str) -> None:
        doing = "unpinning" if self.manager.row(model_id).pinned else "pinning"
        self.submit(model_id, doing, lambda: actions.toggle_pin(self.manager, model_id))

    def plan(self, ticked: Sequence[str]) -> None:
        """Plan ``ticked`` (none: the manager's default plan); the report shows below the buttons."""

        def plan() -> str:
            report = self.manager.plan(list(ticked) or None)
            with self._lock:
                self._plan_html = "".join(table.html() for table in plan_tables(report))
            return report.verdict

        self.submit(None, "planning", plan)

    def unload_all(self) -> None:
        self.submit(None, "unloading all", lambda: actions.unload_all(self.manager))

    def free_memory(self) -> None:
        self.submit(None, "collecting", lambda: actions.free_memory(self.manager))

    def configure(self, name: str, value: Any, doing: str) -> None:
        self.submit(None, doing, lambda: actions.configure(self.manager, name, value))

    def say(self, message: str) -> None:
        """A line in the messages area, from any thread."""
        with self._lock:
            self._messages.append((time.time(), False, message))
        self._changed()

    def submit(self, model_id: str | None, what: str, call: Callable[[], str]) -> bool:
        """Run a manager call off the comm thread; show it pending, then its outcome (``False``: one runs)."""
        key = model_id or ""
        with self._lock:
            if key in self._pending:
                return False  # a second click while the first is running
            self._pending[key] = what
        self._changed()
        if not self._background:
            self._run(key, what, call)
            return True
        thread = threading.Thread(target=self._run, args=(key, what, call), name="llm-dashboard-action", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return True

    def _run(self, key: str, what: str, call: Callable[[], str]) -> None:
        failed = True
        try:
            message, failed = call(), False
        except LLMManagerError as error:
            message = str(error)
        except Exception as error:  # noqa: BLE001 - a bug, not a user error: logged and shown in one line
            log_failure(log, f"dashboard action {what!r} failed", error)
            message = f"{type(error).__name__}: {error}"
        with self._lock:
            self._pending.pop(key, None)
            self._messages.append((time.time(), failed, message))
        self._changed()
        if not self._background:
            self._after()

    def close(self) -> None:
        """Take back waiting Unloads and wait for the actions under way to end."""
        self._unloads.cancel_all()
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(_JOIN_S)
