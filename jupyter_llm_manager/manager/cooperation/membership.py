"""This manager as a member of the machine: it publishes what it holds, reads the others, asks and answers.

It joins the ledger when it first needs to place a model (a manager that
never loads anything stays out of it). From then on a thread publishes its
instances shortly after they change, off the hot path (a lease is not a
write), and a listener answers the other members' requests: evict idle
models for them, or unload one by hand (the JupyterLab panel). Requests for
room are decided by the requester, with the same policy as its own (global
least recently used, priorities, protection, pins, leases); the holder checks
each model again against its own state before it lets it go.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import psutil

from ...devices import gpu_processes
from ...errors import ConfigurationError, log_failure
from ...events import EventBus
from ...reports import KernelRow, MachineModel, MachineReport
from ...support.names import published_name
from ...support.units import excerpt
from ..policy.fit import Eviction, Holding
from ..state import ManagerState
from .ledger import Ledger, MemberRow, ModelRow, RequestRow, default_ledger_path
from .listener import Listener, ask
from .placement_lock import placement_lock

__all__ = ["ANSWER_S", "Cooperation", "Others"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")
#: What can go wrong with the ledger or the listener: the kernel then goes on alone, and says so once.
_LEDGER_FAILURES = (ConfigurationError, OSError, sqlite3.Error)

#: How long another manager has to answer a request (it answers from a thread of its own).
ANSWER_S = 2.0
#: How often a request waiting on other kernels looks at the ledger again.
POLL_S = 0.25
_HEARTBEAT_S = 2.0

#: Frees this manager's idle models for another one: (keys, the requester's priority, who asks) -> freed keys.
EvictFor = Callable[[Sequence[str], int, str], list[str]]
UnloadFor = Callable[[str, str], str]


@dataclass(frozen=True)
class Others:
    """What the other members hold and wait for, as the policy sees it (their keys prefixed by member)."""

    holdings: tuple[Holding, ...] = ()
    requests: tuple[RequestRow, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # member -> notebook (or script, or pid)
    addresses: dict[str, str] = field(default_factory=dict)

    def earlier(self, arrival: int | None) -> list[RequestRow]:
        """Other members' requests that came before ``arrival`` (all of them when this one is not queued yet)."""
        return [r for r in self.requests if arrival is None or r.arrival < arrival]

    def claims(self, ahead: Sequence[RequestRow]) -> tuple[Holding, ...]:
        """The room the requests ``ahead`` (from :meth:`earlier`) will take, as holdings in use (never victims).

        A later request counts them as taken: the room freed for the first
        in the queue is never taken by one behind it.
        """
        return tuple(Holding(f"{r.member}/waiting-{r.arrival}", r.model_id, "loaded", dict(r.needed), leases=1,
                             priority=r.priority, owner=r.member, where=self.names.get(r.member, r.member))
                     for r in ahead if r.needed)


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
        self._publisher: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._failing = ""  # the ledger failure last warned about ("" while all is well)
        self.member = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.pid = os.getpid()
        self.notebook = _notebook_name()
        self.kernel = _kernel_id()

    # -- joining and leaving -------------------------------------------------------------------------

    @property
    def active(self) -> bool:
        with self._state.lock:
            return self._state.settings.cooperate and not self._state.closed

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

    def join(self) -> None:
        """Become a member (when this manager places its first model): publish what it holds, and listen.

        The threads hold this part weakly: a manager nobody references any
        more is collected with its models, and then leaves the ledger (a finalizer).
        A ledger or socket that cannot be used leaves this manager on its own, with a warning.
        """
        ledger = self.ensure_started()
        with self._lock:
            if ledger is None or self._listener is not None:
                return
            try:
                self._join(ledger)
            except _LEDGER_FAILURES as error:
                self._abandon_join()
                self._warn(error)

    @contextmanager
    def placing(self) -> Iterator[None]:
        """The machine's placement lock for the block: read the others, decide, announce (see placement_lock)."""
        ledger = self.ensure_started()
        if ledger is None:
            yield
            return
        with placement_lock(ledger.path):
            yield

    def announce(self) -> None:
        """Publish now what this manager holds (a reservation just made), joining first if need be.

        Called before a request leaves the machine-wide queue, so the next one
        in it never sees the room this one has just taken as free.
        """
        with self._lock:
            joined = self._listener is not None
        if joined:
            self._publish_now()
        else:
            self.join()

    def _abandon_join(self) -> None:
        """Undo a join that failed half way (caller holds the part's lock)."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None
        self._state.on_change = None

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

    def _join(self, ledger: Ledger) -> None:
        me = weakref.ref(self)
        self._listener = Listener(partial(_answer_for, me))
        self._write(ledger)  # raises when the ledger cannot be written: then no member
        self._state.on_change = self._dirty.set
        self._publisher = threading.Thread(target=_publish_loop, args=(me, self._stop, self._dirty),
                                           name="llm-manager-ledger", daemon=True)
        self._publisher.start()
        self._finalizer = weakref.finalize(self, _leave, ledger, self._listener, self._stop, self._dirty,
                                           self.member)

    def stop(self) -> None:
        """Leave the ledger: this member's rows go; its listener and publisher end (it may join again later)."""
        with self._lock:
            ledger, publisher, finalizer = self._ledger, self._publisher, self._finalizer
            self._ledger = self._listener = self._publisher = self._finalizer = None
        self._state.on_change = None
        if finalizer is not None:
            finalizer()  # stops the threads and leaves the ledger, once
        elif ledger is not None:
            ledger.close()
        if publisher is not None and publisher is not threading.current_thread():
            publisher.join(5)
        self._stop = threading.Event()  # a fresh one, for the next join

    # -- publishing --------------------------------------------------------------------------------------

    def _publish_now(self) -> None:
        ledger = self._ledger
        if ledger is not None:
            self._safely(partial(self._write, ledger), None)

    def _rows(self) -> tuple[MemberRow, list[ModelRow]]:
        """What this member publishes now: its row and its instances' rows (read under the state's lock)."""
        state = self._state
        with state.lock:
            now, wall = state.clock(), time.time()
            models = [ModelRow(self.member, instance.key, state.name_of(instance), device, size, instance.state,
                               state.registry.is_pinned(instance.key),
                               instance.in_use,
                               wall - (now - instance.last_used), state.registry.priority(instance.key),
                               state.registry.is_protected(instance.key))
                      for instance in state.instances.values() if not instance.remote
                      for device, size in instance.bytes.items()]
        address = self._listener.address if self._listener is not None else ""
        return MemberRow(self.member, self.pid, _started(), self.kernel, self.notebook, address, wall), models

    def _write(self, ledger: Ledger) -> None:
        ledger.publish_current(self._rows)
        said = ledger.take_recreated()
        if said:
            self._bus.emit("warning", message=said)

    def publish_from_thread(self) -> None:
        """One write of the publisher thread; a busy or broken file is logged and tried again later."""
        ledger = self._ledger
        try:
            if ledger is not None:
                self._write(ledger)
        except Exception as error:  # noqa: BLE001 - the thread survives a busy or broken file, and says so
            log_failure(log, "publishing to the ledger failed; it is tried again", error)

    def publish_soon(self) -> None:
        self._dirty.set()

    # -- reading the others ----------------------------------------------------------------------------

    def others(self, unanswered: frozenset[str] = frozenset()) -> Others:
        """The other members' models (as holdings on this manager's clock) and waiting requests.

        Models of members in ``unanswered`` (they did not answer a request) count as in use.
        """
        ledger = self.ensure_started()
        if ledger is None:
            return Others()
        return self._safely(partial(self._read_others, ledger, unanswered), Others())

    def _read_others(self, ledger: Ledger, unanswered: frozenset[str]) -> Others:
        member_rows, model_rows, request_rows = ledger.others(self.member)
        members = {m.member: m for m in member_rows}
        with self._state.lock:
            now = self._state.clock()
        wall = time.time()
        grouped: dict[tuple[str, str], list[ModelRow]] = {}
        for row in model_rows:
            grouped.setdefault((row.member, row.key), []).append(row)
        holdings = []
        for (member, key), rows in grouped.items():
            first = rows[0]
            state = first.state if first.state in ("loading", "loaded") else "unloading"
            holdings.append(Holding(f"{member}/{key}", first.model_id, state, {r.device: r.bytes for r in rows},  # type: ignore[arg-type]
                                    first.leases + (1 if member in unanswered else 0), frozenset(), first.pinned,
                                    first.priority, first.protected, now - (wall - first.last_used),
                                    owner=member, where=members[member].notebook))
        return Others(tuple(holdings), tuple(request_rows), {m: row.notebook for m, row in members.items()},
                      {m: row.address for m, row in members.items()})

    # -- asking the others --------------------------------------------------------------------------------

    def ask_to_evict(self, evictions: Sequence[Eviction], others: Others, priority: int) -> set[str]:
        """Ask each holder to evict its victims (in parallel, :data:`ANSWER_S` each); the members that did not answer."""
        by_member: dict[str, list[str]] = {}
        for eviction in evictions:
            member, _, key = eviction.key.partition("/")
            by_member.setdefault(member, []).append(key)
        request = {"op": "evict", "priority": priority, "requester": self.notebook}

        def one(member: str) -> str | None:
            answer = ask(others.addresses.get(member, ""), {**request, "keys": by_member[member]}, ANSWER_S)
            return member if answer is None else None

        with ThreadPoolExecutor(max(len(by_member), 1), thread_name_prefix="llm-manager-ask") as pool:
            silent = {member for member in pool.map(one, by_member) if member is not None}
        return silent

    def ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another member to unload one of its idle models (a click in the JupyterLab panel)."""
        others = self.others()
        if member not in others.addresses:
            raise ConfigurationError(f"no manager {member!r} on this machine (it may have stopped)")
        answer = ask(others.addresses[member], {"op": "unload", "model": model_id, "requester": self.notebook},
                     ANSWER_S)
        if answer is None:
            return f"{others.names.get(member, member)} did not answer within {ANSWER_S:g} s"
        return str(answer.get("message") or answer.get("error") or "")

    # -- the machine-wide queue ---------------------------------------------------------------------------

    def enqueue(self, model_id: str, needed: Mapping[str, int], priority: int) -> int | None:
        """Take a place in the machine-wide queue for a request that needs ``needed`` bytes per device.

        The manager joins first (if it had not placed a model yet): the others
        read only members' requests, and must see this one to leave it its turn.
        """
        self.join()
        ledger = self.ensure_started()
        if ledger is None:
            return None
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

    def _answer(self, request: dict[str, Any]) -> dict[str, Any]:
        op, requester = request.get("op"), str(request.get("requester") or "another kernel")[:200]
        if op == "ping":
            return {"member": self.member}
        if op == "evict":
            keys = [k for k in request.get("keys", []) if isinstance(k, str)][:64]
            priority = request.get("priority")
            freed = self._evict_for(keys, priority if isinstance(priority, int) else 0, requester)
            self._publish_now()  # the requester looks again at once
            return {"freed": freed}
        if op == "unload" and isinstance(request.get("model"), str):
            message = self._unload_for(request["model"], requester)
            self._publish_now()
            return {"message": message}
        return {"ok": False, "error": f"unknown request {str(op)[:40]!r}"}

    # -- the report --------------------------------------------------------------------------------------------

    def machine(self, own: list[MachineModel]) -> MachineReport:
        """Every member and its models (this one's from ``own``, fresh), and GPU processes that are not members."""
        ledger = self.ensure_started()
        no_members: list[MemberRow] = []
        no_rows: list[ModelRow] = []
        members = self._safely(ledger.members, no_members) if ledger is not None else no_members
        rows = self._safely(ledger.models, no_rows) if ledger is not None else no_rows
        names = {m.member: m for m in members}
        models = [replace(m, member=self.member) for m in own] + [
            MachineModel(names[r.member].pid, names[r.member].notebook, r.model_id, r.device, r.bytes, r.state,
                         r.pinned, r.leases, r.last_used, False, r.member)
            for r in rows if r.member in names and r.member != self.member]
        kernels = [KernelRow(self.pid, self.notebook, self.kernel, self.member, True, len(own),
                             sum(m.bytes for m in own))]
        for member in members:
            if member.member != self.member:
                theirs = [r for r in rows if r.member == member.member]
                kernels.append(KernelRow(member.pid, member.notebook, member.kernel, member.member, False,
                                         len({r.key for r in theirs}), sum(r.bytes for r in theirs)))
        pids = {k.pid for k in kernels}
        others = tuple(p for p in gpu_processes() if p.pid not in pids)
        return MachineReport(tuple(kernels), tuple(models), others, ledger is not None,
                             str(ledger.path) if ledger is not None else "")


def _publish_loop(cooperation: weakref.ref[Cooperation], stop: threading.Event, dirty: threading.Event) -> None:
    """The publisher thread: publish shortly after a change, and every few seconds (a heartbeat).

    It holds the member only for one write, and keeps no local that reaches the
    manager (its event bus holds subscribers, which may hold the manager): a
    manager nobody refers to is collected with its models, and this thread ends.
    """
    while not stop.is_set():
        dirty.wait(_HEARTBEAT_S)  # a change is written at once: a kernel that asks next sees a model idle as idle
        dirty.clear()
        found = cooperation()
        if found is None or stop.is_set():
            return
        found.publish_from_thread()
        del found


def _answer_for(cooperation: weakref.ref[Cooperation], request: dict[str, Any]) -> dict[str, Any]:
    found = cooperation()
    if found is None:
        return {"ok": False, "error": "this manager is gone"}
    return found._answer(request)


def _leave(ledger: Ledger, listener: Listener, stop: threading.Event, dirty: threading.Event, member: str) -> None:
    """Stop listening and publishing, and take this member's rows out of the ledger."""
    stop.set()
    dirty.set()
    listener.stop()
    try:
        ledger.leave(member)
    except Exception as error:  # noqa: BLE001 - the ledger is a record: leaving never fails a close
        log.debug("could not leave the ledger: %s", error)
    ledger.close()


def _started() -> float:
    return psutil.Process().create_time()


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
        return published_name(session)[:200]
    script = sys.argv[0] if sys.argv and sys.argv[0] not in ("", "-c", "-m") else ""
    if script and not script.endswith(("ipykernel_launcher.py", "__main__.py")) and os.path.exists(script):
        return os.path.basename(script)[:200]
    return f"pid {os.getpid()}"
