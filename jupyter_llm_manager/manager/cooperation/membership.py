"""This manager as a member of the machine: joining and leaving, placing, the machine-wide queue, answering.

It joins the ledger when it first places a model (a manager that never loads
anything stays out of it): from then on its rows are published
(:mod:`.publishing`) and a listener answers the other members' requests
(:mod:`.listener`): evict idle models for them, or unload one by hand (the
JupyterLab panel), decided with the same policy as its own requests. A
placement reads the others and writes its reservation in one ledger
transaction (:meth:`Cooperation.placement`). Whatever goes wrong with the
ledger or the socket leaves this manager working alone, with one warning;
where cooperation cannot run at all (no Unix sockets), it is off and
``machine()`` says why.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from ...errors import ConfigurationError, log_failure
from ...events import EventBus
from ...reports import MachineModel, MachineReport
from ...support.units import excerpt
from ..policy.fit import Eviction
from ..state import ManagerState
from . import peers
from .ledger import AllRows, Ledger, LedgerBusy, default_ledger_path
from .listener import Listener
from .machine import machine_report
from .peers import ANSWER_S, Others, others_from
from .publishing import Identity, Publisher, rows_of
from .rows import MemberRow, ModelRow

__all__ = ["ANSWER_S", "POLL_S", "Cooperation", "Placing", "impossible_here"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: What can go wrong with the ledger or the listener: the kernel then goes on alone, and says so once.
_LEDGER_FAILURES = (ConfigurationError, OSError, sqlite3.Error)
#: How often a request waiting on other kernels looks at the ledger again.
POLL_S = 0.25

#: Frees this manager's idle models for another one: (keys, the requester's priority, who asks) -> freed keys.
EvictFor = Callable[[Sequence[str], int, str], list[str]]
UnloadFor = Callable[[str, str], str]


def impossible_here() -> str:
    """Why cooperation cannot run on this system ("" where it can): members reach each other on Unix sockets."""
    if not hasattr(socket, "AF_UNIX"):
        return "this system has no Unix domain sockets (socket.AF_UNIX), which kernels use to reach each other"
    return ""


class Placing:
    """One placement as admission sees it: the others, read inside the ledger's transaction, and publishing."""

    def __init__(self, others: Others, publish: Callable[[], None] = lambda: None) -> None:
        self.others = others
        self._publish = publish

    def publish(self) -> None:
        """Write this manager's rows (its reservation) before the placement ends: the next one sees it."""
        self._publish()


class Cooperation:
    """The cooperation part of one manager (see the module docstring)."""

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
        self._impossible = impossible_here()
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
            return self._state.settings.cooperate and not self._state.closed and not self._impossible

    def ensure_started(self) -> Ledger | None:
        """The ledger, opened to read if this manager cooperates; ``None`` otherwise. Starts no thread."""
        if not self.active:
            return None
        with self._lock:
            if self._ledger is None:
                with self._state.lock:
                    configured = self._state.settings.ledger_path
                self._ledger = Ledger(Path(os.path.expanduser(configured)) if configured else default_ledger_path())
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
                self._listener = Listener(partial(_answer_for, weakref.ref(self)))
            except _LEDGER_FAILURES as error:
                self._warn(error)
                return False
            self._publisher = Publisher(self.publish_from_thread)
            self._state.on_change = self._publisher.soon
            self._publisher.start()
            self._finalizer = weakref.finalize(self, _leave, ledger, self._listener, self._publisher, self.member)
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

    @contextmanager
    def placement(self, wait: float = ANSWER_S) -> Iterator[Placing]:
        """One placement: the others, and this manager's reservation written, in one ledger transaction.

        Without cooperation, or while the ledger cannot be used, the others
        are nobody (this manager works alone, with a warning). A ledger kept
        locked for ``wait`` seconds by another process gives others marked
        ``busy``: nothing may be placed safely now.
        """
        ledger = self.ensure_started()
        stack = ExitStack()
        placing = Placing(Others())
        if ledger is not None:
            try:
                transaction = stack.enter_context(ledger.placement(self.member, wait))
                placing = Placing(self._others_from(transaction.others()),
                                  partial(self._publish_in, transaction.publish))
            except LedgerBusy as error:
                stack.close()
                log.debug("placing without the ledger's lock is not safe: %s", error)
                placing = Placing(Others(busy=True))
            except _LEDGER_FAILURES as error:
                stack.close()
                self._warn(error)
        done = False
        try:
            with stack:
                yield placing
                done = True
        except _LEDGER_FAILURES as error:
            if not done:
                raise  # the caller's own error: the transaction was rolled back
            self._warn(error)  # the commit failed: the others may not see this reservation

    def _publish_in(self, write: Callable[[MemberRow, Sequence[ModelRow]], None]) -> None:
        if self.join():
            self._safely(lambda: write(*self._rows()), None)

    def publish_soon(self) -> None:
        publisher = self._publisher
        if publisher is not None:
            publisher.soon()

    def publish_from_thread(self) -> None:
        """One write of the publisher thread; a busy or broken file is logged and tried again later."""
        ledger = self._ledger
        try:
            if ledger is not None:
                ledger.publish_current(self._rows)
                said = ledger.take_recreated()
                if said:
                    self._bus.emit("warning", message=said)
        except Exception as error:  # noqa: BLE001 - the thread survives a busy or broken file, and says so
            log_failure(log, "publishing to the ledger failed; it is tried again", error)

    def _rows(self) -> tuple[MemberRow, list[ModelRow]]:
        listener = self._listener
        return rows_of(self._state, self.me, listener.address if listener is not None else "")

    # -- reading and asking the others ------------------------------------------------------------------

    def others(self) -> Others:
        """What the other members hold and wait for now (a read, outside any placement)."""
        ledger = self.ensure_started()
        if ledger is None:
            return Others()
        return self._safely(lambda: self._others_from(ledger.others(self.member)), Others())

    def _others_from(self, rows: AllRows) -> Others:
        with self._state.lock:
            now = self._state.clock()
        return others_from(rows, now)

    def ask_to_evict(self, evictions: Sequence[Eviction], others: Others, priority: int) -> set[str]:
        """Ask each holder to evict its victims; the members that did not answer."""
        return peers.ask_to_evict(evictions, others, priority, self.notebook)

    def ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another member to unload one of its idle models (a click in the JupyterLab panel)."""
        others = self.others()
        if member not in others.addresses:
            raise ConfigurationError(f"no manager {member!r} on this machine (it may have stopped)")
        return peers.ask_to_unload(others, member, model_id, self.notebook)

    # -- the machine-wide queue ---------------------------------------------------------------------------

    def enqueue(self, model_id: str, needed: Mapping[str, int], priority: int) -> int | None:
        """Take a place in the machine-wide queue for a request that needs ``needed`` bytes per device.

        The manager joins first: the others read only members' requests, and must see this one to leave it its turn.
        """
        ledger = self.ensure_started()
        if ledger is None or not self.join():
            return None
        self._safely(partial(ledger.publish_current, self._rows), None)
        return self._safely(partial(ledger.enqueue, self.member, model_id, needed, priority), None)

    def requeue(self, arrival: int, needed: Mapping[str, int]) -> None:
        """The queued request now needs other room (placed elsewhere, another context): the others see it."""
        ledger = self._ledger
        if ledger is not None:
            self._safely(partial(ledger.requeue, arrival, needed), None)

    def dequeue(self, arrival: int | None) -> None:
        ledger = self._ledger
        if arrival is not None and ledger is not None:
            try:
                ledger.dequeue(arrival)
            except Exception as error:  # noqa: BLE001 - a request that cannot be removed is dropped with its member
                log.debug("could not leave the machine-wide queue: %s", error)

    # -- answering ----------------------------------------------------------------------------------------------

    def answer(self, request: dict[str, Any]) -> dict[str, Any]:
        """The answer to another member's request (on the listener's thread)."""
        op, requester = request.get("op"), str(request.get("requester") or "another kernel")[:200]
        if op == "ping":
            return {"member": self.member}
        if op == "evict":
            keys = [k for k in request.get("keys", []) if isinstance(k, str)][:64]
            priority = request.get("priority")
            freed = self._evict_for(keys, priority if isinstance(priority, int) else 0, requester)
            self.publish_from_thread()  # the requester looks again at once
            return {"freed": freed}
        if op == "unload" and isinstance(request.get("model"), str):
            message = self._unload_for(request["model"], requester)
            self.publish_from_thread()
            return {"message": message}
        return {"ok": False, "error": f"unknown request {str(op)[:40]!r}"}

    # -- failures and the report --------------------------------------------------------------------------------

    def _safely(self, work: Callable[[], _T], fallback: _T) -> _T:
        """``work()``, or ``fallback`` with a warning (once) when the ledger fails: it never stops this kernel."""
        try:
            result = work()
        except _LEDGER_FAILURES as error:
            self._warn(error)
            return fallback
        self._failing = ""
        return result

    def _warn(self, error: BaseException) -> None:
        said = excerpt(str(error), 300)
        if said != self._failing:
            self._failing = said
            self._bus.emit("warning", message=f"cooperation with other kernels is off for now ({said}); this "
                                              "kernel goes on with its own memory only")

    def machine(self, own: list[MachineModel]) -> MachineReport:
        """Every member and its models (this one's from ``own``, fresh), and GPU processes that are not members."""
        ledger = self.ensure_started()
        if ledger is None:
            with self._state.lock:
                reason = self._impossible or ("cooperate is off for this manager" if not
                                              self._state.settings.cooperate else "the manager is closed")
            return machine_report(self.me, own, [], [], ledger="", reason=reason)
        no_members: list[MemberRow] = []
        no_rows: list[ModelRow] = []
        members = self._safely(ledger.members, no_members)
        rows = self._safely(ledger.models, no_rows)
        return machine_report(self.me, own, members, rows, ledger=str(ledger.path), reason="")


def _answer_for(cooperation: weakref.ref[Cooperation], request: dict[str, Any]) -> dict[str, Any]:
    found = cooperation()
    if found is None:
        return {"ok": False, "error": "this manager is gone"}
    return found.answer(request)


def _leave(ledger: Ledger, listener: Listener, publisher: Publisher, member: str) -> None:
    """Stop listening and publishing, and take this member's rows out of the ledger."""
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
    """The notebook's path (JupyterLab tells kernels), else the script, else ``pid N``."""
    session = os.environ.get("JPY_SESSION_NAME", "").strip()
    if session:
        return session[:200]
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    if script and not script.endswith(("ipykernel_launcher.py", "__main__.py")) and os.path.exists(script):
        return os.path.basename(script)[:200]
    return f"pid {os.getpid()}"
