"""This manager as a member of the machine: who it is, joining and leaving, publishing, answering the others.

It joins the ledger when it first places a model (a manager that never loads
anything stays out of it): from then on its rows are published
(:mod:`.publishing`) and a listener (:mod:`.listener`) answers the other
members' requests: evict idle models for them, or unload one by hand (the
JupyterLab panel), decided with the same policy as its own requests.
Whatever goes wrong with the ledger or the socket leaves this manager working
alone, with one warning; where cooperation cannot run at all (no Unix
sockets), it is off and ``machine()`` says why.
"""

from __future__ import annotations

import logging
import os
import socket
import sqlite3
import sys
import threading
import uuid
import weakref
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ...errors import ConfigurationError, log_failure
from ...events import EventBus
from ...reports import UnloadReport
from ...support.names import message_name, published_name, shown_name
from ...support.units import excerpt
from ..state import ManagerState
from .ledger import Ledger, default_ledger_path
from .ledger_checks import NotALedger
from .listener import Listener, ask
from .peers import ANSWER_S
from .publishing import Identity, Published, Publisher, rows_of, sized

__all__ = ["ANSWER_S", "LEDGER_FAILURES", "POLL_S", "EvictFor", "Membership", "UnloadFor", "impossible_here"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: What can go wrong with the ledger or the listener: the kernel then goes on alone, and says so once.
LEDGER_FAILURES = (ConfigurationError, OSError, sqlite3.Error)
#: How often a request waiting on other kernels looks at the ledger again, in case a wake-up was lost.
POLL_S = 0.25
#: How long a member that let go of room waits for a waiting member to take the news.
WAKE_S = 0.2
#: How long a load waits for its ``loaded`` row to be written before it returns (a ledger that cannot be
#: written does not hold it longer).
PUBLISHED_S = 0.5

#: Frees this manager's idle models for another one: (keys, the requester's priority, who asks) -> what each freed.
EvictFor = Callable[[Sequence[str], int, str], list[UnloadReport]]
UnloadFor = Callable[[str, str], str]


def impossible_here() -> str:
    """Why cooperation cannot run on this system ("" where it can): members reach each other on Unix sockets."""
    if not hasattr(socket, "AF_UNIX"):
        return "this system has no Unix domain sockets (socket.AF_UNIX), which kernels use to reach each other"
    return ""


class Membership:
    """This manager as a member: who it is, joining and leaving, publishing, answering, failures."""

    def __init__(self, state: ManagerState, bus: EventBus, evict_for: EvictFor, unload_for: UnloadFor) -> None:
        self._state = state
        self._bus = bus
        self._evict_for = evict_for
        self._unload_for = unload_for
        self._lock = threading.Lock()
        self._ledger: Ledger | None = None
        self._listener: Listener | None = None
        self._publisher: Publisher | None = None
        self._finalizer: weakref.finalize | None = None
        self._failing = ""  # the ledger failure last warned about ("" while all is well)
        self.impossible = impossible_here()
        #: More routes on this member's socket, made when it joins: the copies it lends to the others.
        self.routes: Callable[[], Sequence[Any]] = tuple
        self.me = Identity(f"{os.getpid()}-{uuid.uuid4().hex[:8]}", os.getpid(), _kernel_id(), _notebook_name())

    @property
    def member(self) -> str:
        return self.me.member

    @property
    def pid(self) -> int:
        return self.me.pid

    @property
    def notebook(self) -> str:
        return self.me.notebook

    # -- joining and leaving -------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        with self._state.lock:
            return self._state.settings.cooperate and not self._state.closed and not self.impossible

    @property
    def ledger(self) -> Ledger | None:
        """The ledger, once opened (``None`` before, and once left)."""
        return self._ledger

    def ensure_started(self) -> Ledger | None:
        """The ledger, opened to read if this manager cooperates; ``None`` otherwise. Starts no thread."""
        if not self.active:
            return None
        with self._lock:
            if self._ledger is None:
                with self._state.lock:
                    configured = self._state.settings.ledger_path
                path = Path(os.path.expanduser(configured)) if configured else default_ledger_path()
                self._ledger = Ledger(path, explicit=bool(configured))
            return self._ledger

    def join(self) -> bool:
        """Become a member: listen, and publish from a thread. Whether it is one (a socket that cannot be made
        leaves this manager on its own, with a warning). The threads hold this part weakly (see publishing)."""
        ledger = self.ensure_started()
        with self._lock:
            if ledger is None:
                return False
            if self._listener is not None:
                return True
            try:
                self._listener = Listener(partial(_answer_for, weakref.ref(self)), self.routes())
            except LEDGER_FAILURES as error:
                self.warn(error)
                return False
            self._publisher = Publisher(self.publish_from_thread)
            self._state.on_change = self._publisher.soon
            ledger.on_recreated = self._publisher.soon  # the others wait for this member's rows in the new file
            self._publisher.start()
            self._finalizer = weakref.finalize(self, _leave, ledger, self._listener, self._publisher, self.member,
                                              os.getpid())
            return True

    def stop(self) -> None:
        """Leave the ledger: this member's rows go; its listener and publisher end (it may join again later)."""
        with self._lock:
            ledger, finalizer = self._ledger, self._finalizer
            self._ledger = self._listener = self._publisher = self._finalizer = None
        self._state.on_change = None
        if finalizer is not None:
            finalizer()  # stops the threads and leaves the ledger, once
        elif ledger is not None:
            ledger.close()

    # -- placing ------------------------------------------------------------------------------------------

    def publish_soon(self) -> None:
        publisher = self._publisher
        if publisher is not None:
            publisher.soon()

    def published(self, timeout: float = PUBLISHED_S) -> None:
        """Wait (at most ``timeout``) until the publisher has written every change made so far."""
        publisher = self._publisher
        if publisher is not None:
            publisher.written(timeout)

    def publish_from_thread(self, changed: bool = False) -> None:
        """One write of the publisher thread; a busy or broken file is logged and tried again later.

        After a change (not a heartbeat) the members with requests waiting for room are told to look again
        at once: the room may be theirs now (a lease ended, a model was freed), and a waiting request never
        sleeps through it until its next look.
        """
        ledger = self._ledger
        if ledger is None:
            return
        try:
            ledger.publish_current(self.rows)
            said = ledger.take_recreated()
            if said:
                log.warning("%s", said)
                self._bus.emit("warning", message=said)
            if changed:
                self._wake_waiting(ledger)
        except LEDGER_FAILURES as error:  # a file that cannot be used: said once while it lasts, tried again
            self.say(error)
            return
        except Exception as error:  # noqa: BLE001 - the thread survives anything, and says so
            log_failure(log, "publishing to the ledger failed; it is tried again", error)
            return
        self._failing = ""

    def _wake_waiting(self, ledger: Ledger) -> None:
        members, _, requests = ledger.others(self.member)
        addresses = {m.member: m.address for m in members}
        for member in dict.fromkeys(r.member for r in requests):
            ask(addresses.get(member, ""), {"op": "wake", "requester": self.me.notebook}, WAKE_S)

    def rows(self) -> Published:
        listener = self._listener
        member, models, copies = rows_of(self._state, self.me, listener.address if listener is not None else "")
        return member, models, sized(self._state, copies)

    # -- reading and asking the others ------------------------------------------------------------------

    # -- answering ----------------------------------------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to another member's request (on the listener's thread)."""
        op, requester = request.get("op"), message_name(str(request.get("requester") or "another kernel")[:200])
        if op == "ping":
            return {"member": self.member}
        if op == "wake":  # another member let go of something: requests waiting for room look again now
            self._state.wake_waiters()
            return {}
        if op == "evict":
            keys = [k for k in request.get("keys", []) if isinstance(k, str)][:64]
            priority = request.get("priority")
            reports = self._evict_for(keys, priority if isinstance(priority, int) else 0, requester)
            self.publish_from_thread()  # the requester looks again at once (it waits for this answer)
            return {"freed": [r.instance for r in reports],  # the keys (what members before "evicted" read)
                    "evicted": [{"model": r.model_id, "freed": r.freed_bytes, "held": r.held_bytes} for r in reports]}
        if op == "unload" and isinstance(request.get("model"), str):
            message = self._unload_for(request["model"], requester)
            self.publish_from_thread()
            return {"message": message}
        return {"ok": False, "error": f"unknown request {str(op)[:40]!r}"}

    # -- failures and the report --------------------------------------------------------------------------------

    def safely(self, work: Callable[[], _T], fallback: _T, *, reading: bool = False) -> _T:
        """``work()``, or ``fallback`` with a warning (once) when the ledger fails: it never stops this kernel
        (but for a ``ledger_path`` the user set that names no ledger: that is the user's to fix).

        A write that succeeds ends the failure (the next one is warned about again); a read (``reading``)
        does not: a file that can be read but not written (a full disk) is warned about once.
        """
        try:
            result = work()
        except LEDGER_FAILURES as error:
            self.warn(error)
            return fallback
        if not reading:
            self._failing = ""
        return result

    @property
    def failing(self) -> str:
        """The ledger failure last warned about, while it lasts ("" while all is well)."""
        return self._failing

    def warn(self, error: BaseException) -> None:
        """Say once (an event and the log) that the ledger cannot be used while ``error`` lasts.

        :class:`~.ledger_checks.NotALedger` at a ``ledger_path`` the user set is raised instead.
        """
        if isinstance(error, NotALedger) and self._ledger is not None and self._ledger.explicit:
            raise error
        self.say(error)

    def say(self, error: BaseException) -> None:
        """The warning of :meth:`warn`, never raised (the publisher thread's: it must survive)."""
        said = excerpt(str(error), 300)
        if said != self._failing:
            self._failing = said
            message = (f"cooperation with other kernels is off for now ({said}); this kernel goes on with its own "
                       "memory only (what it last read of the other kernels still counts)")
            log.warning("%s", message)
            self._bus.emit("warning", message=message)


def _answer_for(cooperation: weakref.ref[Membership], request: dict[str, Any]) -> dict[str, Any]:
    found = cooperation()
    if found is None:
        return {"ok": False, "error": "this manager is gone"}
    return found.answer(request)


def _leave(ledger: Ledger, listener: Listener, publisher: Publisher, member: str, pid: int) -> None:
    """Stop listening and publishing, and take this member's rows out of the ledger.

    Only in the process that joined (``pid``): a forked child that exits leaves its parent's rows, socket and
    connection alone.
    """
    if os.getpid() != pid:
        return
    publisher.stop()
    listener.stop()
    try:
        ledger.leave(member)
    except Exception as error:  # noqa: BLE001 - the ledger is a record: leaving never fails a close
        log.debug("could not leave the ledger: %s", error)
    ledger.close()


def _kernel_id() -> str:
    """The Jupyter kernel's id, from its connection file, when this process is a kernel."""
    if "ipykernel" not in sys.modules:
        return ""
    try:
        from ipykernel.connect import get_connection_file

        name = Path(get_connection_file()).stem
    except Exception:  # noqa: BLE001 - not a kernel after all (an IPython terminal)
        return ""
    return name.removeprefix("kernel-")


def _notebook_name() -> str:
    """The notebook's path (JupyterLab tells kernels; the home folder as ``~``), else the script, else ``pid N``."""
    session = os.environ.get("JPY_SESSION_NAME", "").strip()
    if session:
        return shown_name(published_name(session))
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    if script and not script.endswith(("ipykernel_launcher.py", "__main__.py")) and os.path.exists(script):
        return shown_name(os.path.basename(script))
    return f"pid {os.getpid()}"
