"""Clicks that reach the kernel while a cell runs, and a note at once where they cannot.

JupyterLab >= 4.4 sends comm messages on kernel subshells ("Kernel comms over
subshells", one subshell per comm target by default) when the kernel has them
(ipykernel >= 7), so a widget's callback can run while a cell blocks the main
shell. ipykernel >= 7.3 overrides that choice for each comm: a message goes
to whichever shell last *published* on the comm (so that an async cell waiting
for a widget's reply gets it). Our widgets are created by a cell and updated
by the dashboard's thread while cells run, so every click was sent to the main
shell and waited behind the running cell (a Pin clicked during a generation
took effect when the generation ended).

:func:`follow_frontend` lets the frontend's choice stand for one of our comms:
a message sent on a subshell is handled there at once, and one sent to the
main shell (no subshells: an older JupyterLab, classic Notebook, VS Code)
while a cell runs is reported to ``on_queued`` the moment it arrives (ipykernel
reads every message on a thread of its own), so the button can say "runs when
the cell finishes". Our comms are never awaited by a cell, so nothing needs
the override. Uses ipykernel internals (``_reply_subshell_for``); where they are
absent nothing changes and :func:`clicks_wait_for_cells` says whether a click
can reach the kernel during a cell at all.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from ..errors import log_failure

__all__ = ["QUEUED_NOTE", "CellWatch", "cell_watch", "clicks_wait_for_cells", "follow_frontend"]

log = logging.getLogger(__name__)

#: What a button says when its click waits for the running cell.
QUEUED_NOTE = "runs when the cell finishes"

_ROUTE = "_reply_subshell_for"  # ipykernel >= 7.3: where a comm's incoming messages go


class CellWatch:
    """Whether the main shell is running a cell, from IPython's ``pre_run_cell`` and ``post_run_cell``.

    Only the main thread's cells count (a subshell's cells run elsewhere and
    hold nothing back). Made while a cell runs (``%load_ext``, ``%llm
    dashboard``), it starts out busy: that cell's ``post_run_cell`` is still to come.
    """

    def __init__(self, shell: Any = None, *, busy: bool = False) -> None:
        self._busy = threading.Event()
        if busy:
            self._busy.set()
        if shell is not None:
            shell.events.register("pre_run_cell", self._started)
            shell.events.register("post_run_cell", self._finished)

    @property
    def busy(self) -> bool:
        """A message sent to the main shell now waits for a cell."""
        return self._busy.is_set()

    def _started(self, *_: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._busy.set()

    def _finished(self, *_: Any) -> None:
        if threading.current_thread() is threading.main_thread():
            self._busy.clear()


_watch: CellWatch | None = None
_watch_lock = threading.Lock()


def cell_watch() -> CellWatch:
    """The kernel's one :class:`CellWatch` (outside IPython: one that is never busy)."""
    global _watch
    with _watch_lock:
        if _watch is None:
            shell = _shell()
            _watch = CellWatch(shell, busy=shell is not None and threading.current_thread() is threading.main_thread())
        return _watch


def _shell() -> Any:
    try:
        from IPython import get_ipython
    except ImportError:  # pragma: no cover - IPython is a dependency
        return None
    shell = get_ipython()
    return shell if shell is not None and hasattr(shell, "events") else None


def _kernel() -> Any:
    shell = _shell()
    return getattr(shell, "kernel", None) if shell is not None else None


def clicks_wait_for_cells() -> bool:
    """Whether this kernel handles every comm message on its main shell (ipykernel < 7: no subshells)."""
    kernel = _kernel()
    return kernel is not None and getattr(kernel, "shell_channel_thread", None) is None


def follow_frontend(channel: Any, on_queued: Callable[[Any], None] | None = None,
                    watch: CellWatch | None = None) -> bool:
    """Send ``channel``'s incoming messages where the frontend sent them; ``on_queued(data)`` for those that wait.

    ``on_queued`` runs on ipykernel's shell-channel thread as a message
    arrives for the busy main shell: it must be quick and must not block.
    Returns whether the kernel routes comm messages itself (and so whether
    ``on_queued`` can ever be called).
    """
    if channel is None or not callable(getattr(channel, _ROUTE, None)):
        return False
    watch = watch or cell_watch()

    def route(data: Any, frontend_choice: str | None) -> str | None:
        if frontend_choice is None and on_queued is not None and watch.busy:
            try:
                on_queued(data)
            except Exception as error:  # noqa: BLE001 - an error here would drop the user's message
                log_failure(log, "noting a click that waits for the cell failed", error)
        return frontend_choice

    setattr(channel, _ROUTE, route)
    return True
