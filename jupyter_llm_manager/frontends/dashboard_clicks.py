"""Which dashboard clicks reach the kernel while a cell runs, and which wait for it (:mod:`.kernel_comms`)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .kernel_comms import QUEUED_NOTE, cell_watch, clicks_wait_for_cells, follow_frontend

__all__ = ["Clicks"]


def is_click(data: Any) -> bool:
    """A button's click as ipywidgets sends it: ``{"method": "custom", "content": {"event": "click"}}``."""
    content = data.get("content") if isinstance(data, dict) else None
    return isinstance(content, dict) and data.get("method") == "custom" and content.get("event") == "click"


class Clicks:
    """Every widget follows the frontend's routing; which buttons' clicks wait for the running cell.

    Clicks sent on a kernel subshell run at once. One that arrives for the
    busy main shell marks its button "runs when the cell finishes" until it
    runs; on a kernel that takes no click during a cell (ipykernel < 7), every
    button says so in its tooltip while a cell runs (:meth:`hint`).
    """

    def __init__(self, wake: Callable[[], None], say: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._queued: set[int] = set()
        self._wake = wake
        self._say = say
        self._cells = cell_watch()
        self._cells_block_clicks = clicks_wait_for_cells()

    def bind(self, button: Any, action: Callable[[], None]) -> None:
        """``action`` on a click; a click that waits for the running cell shows it on the button at once."""

        def clicked(_: Any) -> None:
            with self._lock:
                self._queued.discard(id(button))  # it arrived: the wait is over
            action()

        button.on_click(clicked)
        self.follow([button], lambda data: self._waiting(button, data))

    def follow(self, widgets: list[Any], on_queued: Callable[[Any], None] | None = None) -> None:
        """Let the frontend route the messages of ``widgets`` (and of their layouts and styles)."""
        for widget in widgets:
            follow_frontend(getattr(widget, "comm", None), on_queued, self._cells)
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                follow_frontend(getattr(part, "comm", None), None, self._cells)

    def follow_field(self, field: Any, name: str) -> None:
        """A setting typed in ``field``: when its change waits for the cell, a message says so at once."""

        def waiting(data: Any) -> None:
            state = data.get("state") if isinstance(data, dict) else None
            if isinstance(state, dict) and "value" in state:
                self._say(f"The new {name} {QUEUED_NOTE}.")

        self.follow([field], waiting)

    def _waiting(self, button: Any, data: Any) -> None:
        """On ipykernel's shell-channel thread, as a click arrives for the busy main shell."""
        if is_click(data):
            with self._lock:
                self._queued.add(id(button))
            self._wake()

    def queued(self) -> set[int]:
        """The buttons (by ``id``) whose click waits for the running cell."""
        with self._lock:
            return set(self._queued)

    def hint(self) -> str | None:
        """What every button's tooltip says while no click can reach the kernel (a cell runs, no subshells)."""
        return QUEUED_NOTE if self._cells_block_clicks and self._cells.busy else None
