"""Publishing: what this member holds, written to the ledger shortly after each change, and as a heartbeat.

A thread writes the member's rows when the state changes (a lease is not a
change worth a write) and every few seconds; a placement writes them itself,
inside its transaction. The thread holds the member only for one write and
keeps nothing that reaches the manager between writes, so a manager nobody
refers to is collected with its models, and the thread ends.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import replace

from ...errors import LLMManagerError
from ...support.system import psutil
from ..instances import Instance
from ..state import ManagerState
from .rows import CopyRow, MemberRow, ModelRow

__all__ = ["HEARTBEAT_S", "Identity", "Published", "Publisher", "rows_of", "sized"]

#: How often a member writes its rows even when nothing changed (others see it is alive).
HEARTBEAT_S = 2.0


class Identity:
    """Who a member is: its ledger id, process, kernel and notebook (or script, or ``pid N``)."""

    def __init__(self, member: str, pid: int, kernel: str, notebook: str) -> None:
        self.member = member
        self.pid = pid
        self.kernel = kernel
        self.notebook = notebook
        self.started = psutil.Process(pid).create_time()


Published = tuple[MemberRow, list[ModelRow], list[CopyRow]]


def rows_of(state: ManagerState, identity: Identity, address: str) -> Published:
    """What a member publishes now: its row, its local instances' rows and the copies it lends (read under the
    state's lock; a member lends only while it listens and ``share`` is on)."""
    with state.lock:
        now, wall = state.clock(), time.time()
        registry = state.registry
        models = [ModelRow(identity.member, instance.key, state.name_of(instance), device, size, instance.state,
                           registry.is_pinned(instance.key), instance.in_use, wall - (now - instance.last_used),
                           registry.priority(instance.key), registry.is_protected(instance.key))
                  for instance in state.instances.values() if not instance.remote
                  for device, size in instance.bytes.items()]
        # memory of unloaded models that did not come back (a variable holds them): the others count it too
        models += [ModelRow(identity.member, f"held-{index}", held.model_id, device, size, "held", False, 1, wall,
                            0, False) for index, held in enumerate(state.held) for device, size in held.bytes.items()]
        lending = bool(address) and state.settings.share
        copies = [CopyRow(identity.member, instance.key, share, _context(instance), dict(instance.borrowers))
                  for instance in state.instances.values() if lending and instance.state in ("loading", "loaded")
                  for share in [instance.spec.share_key] if share is not None]
    member = MemberRow(identity.member, identity.pid, identity.started, identity.kernel, identity.notebook, address,
                       wall)
    return member, models, copies


def _context(instance: Instance) -> int:
    """The context an instance was loaded with: 0 where none is allocated at load (any will do), -1 while a
    copy loading with its backend's default is not sized yet (only a borrower that takes any context waits
    for it)."""
    if not instance.backend.context_at_load:
        return 0
    if instance.loaded is not None and instance.loaded.context_length:
        return instance.loaded.context_length
    if instance.placement.context:
        return instance.placement.context
    return instance.spec.max_context if isinstance(instance.spec.max_context, int) else -1


def sized(state: ManagerState, copies: list[CopyRow]) -> list[CopyRow]:
    """``copies``, those still loading with their backend's default context given the context they will have
    (read from the model's file, outside the state's lock): a borrower that needs it waits for that copy."""
    found = []
    for copy in copies:
        if copy.context == -1:
            with state.lock:
                instance = state.instances.get(copy.key)
            try:
                context = instance.backend.lent_context(instance.spec) if instance is not None else -1
            except (LLMManagerError, OSError):
                context = -1  # its file cannot be read: it lends only to borrowers that take any context
            copy = replace(copy, context=context or -1)
        found.append(copy)
    return found

class Publisher:
    """The publisher thread of one member: ``write(changed)`` is called shortly after :meth:`soon` (``changed``
    true), and every heartbeat."""

    def __init__(self, write: Callable[[bool], None]) -> None:
        self._dirty = threading.Event()
        self._stop = threading.Event()
        self._progress = _Progress()
        self._thread = threading.Thread(target=_publish_loop, args=(weakref.WeakMethod(write), self._stop, self._dirty,
                                                                    self._progress),
                                        name="llm-manager-ledger", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def soon(self) -> None:
        """Something changed: write it at once (cheap, no I/O here; called under the state's lock)."""
        self._progress.changes += 1
        self._dirty.set()

    def written(self, timeout: float) -> bool:
        """Wait until every change made so far is written (at most ``timeout`` seconds): a load returns once the
        others can read it as loaded, so what another kernel plans or loads next sees it as it is."""
        return self._progress.reached(self._progress.changes, timeout)

    def stop(self) -> None:
        """End the thread (it finishes a write in progress); never waits for itself."""
        self._stop.set()
        self._dirty.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(5)


class _Progress:
    """How many changes were asked to be written, and how many of them are written (or failed to be)."""

    def __init__(self) -> None:
        self.changes = 0
        self.written = 0
        self._condition = threading.Condition()

    def wrote(self, mark: int) -> None:
        with self._condition:
            self.written = max(self.written, mark)
            self._condition.notify_all()

    def reached(self, mark: int, timeout: float) -> bool:
        with self._condition:
            return self._condition.wait_for(lambda: self.written >= mark, timeout)


def _publish_loop(write: weakref.WeakMethod, stop: threading.Event, dirty: threading.Event,
                  progress: _Progress) -> None:
    """Write shortly after a change and every heartbeat; end when stopped or when the member is collected.

    ``write(changed)``: ``changed`` is true after a change (not a heartbeat), when waiting kernels are woken.
    """
    try:
        while not stop.is_set():
            changed = dirty.wait(HEARTBEAT_S)  # a change is written at once: a kernel that asks next sees it as it is
            dirty.clear()
            mark = progress.changes  # every change made before this write is in it
            found = write()
            if found is None or stop.is_set():
                return
            found(changed)
            del found
            progress.wrote(mark)
    finally:
        progress.wrote(1 << 62)  # nobody waits for a thread that ended
