"""Loaded copies of weights (instances) and the one state machine they follow.

An instance is created when a request for its key is admitted and leaves the
table when it is freed. Its states, and the only moves between them::

    loading ──(load succeeded)──▶ loaded ──(unload, evict, expire)──▶ unloading ──▶ unloaded
       └──────(load failed or interrupted)──▶ failed

``unloaded`` and ``failed`` instances are no longer in the table. A model id's
status row adds ``registered`` (no instance), ``waiting`` (a request for it
waits for capacity) and ``failed`` (its last load failed) around these.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal

from ..backends.base import Backend, LoadedModel, Placement
from ..config.spec import ModelSpec
from ..reports import MemoryEstimate
from ..support.deadlines import Deadline, wait_for
from ..support.referrers import SOMETHING

__all__ = ["HeldMemory", "Instance", "InstanceState", "TurnCancelled", "TurnHeld", "TurnTimeout", "Turns",
           "accounted_bytes", "dependents"]

InstanceState = Literal["loading", "loaded", "unloading", "unloaded", "failed"]
_MOVES: dict[str, frozenset[str]] = {
    "loading": frozenset({"loaded", "failed"}),
    "loaded": frozenset({"unloading"}),
    "unloading": frozenset({"unloaded"}),
}


@dataclass(eq=False)
class Instance:
    """One loaded (or loading) copy of weights, shared by every id with its key.

    Mutated only under the manager's lock; ``ready`` is set once the load
    ends, either way, so threads that joined the load can look again.
    """

    key: str
    spec: ModelSpec
    backend: Backend
    estimate: MemoryEstimate
    placement: Placement
    state: InstanceState = "loading"
    loader: int | None = None  # the thread running the load
    loaded: LoadedModel | None = None
    bytes: dict[str, int] = field(default_factory=dict)  # accounted: the estimate, then footprint + reserve
    footprint: dict[str, int] = field(default_factory=dict)  # measured after the load
    leases: int = 0
    lease_threads: Counter[int] = field(default_factory=Counter)
    joiners: set[int] = field(default_factory=set)  # threads promised a lease once it is loaded
    last_used: float = 0.0
    load_seconds: float | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    imported: tuple[tuple[str, float], ...] = ()  # first imports its load paid for: (module, seconds)
    arrival: int | None = None  # the arrival number of its first waiter, when it was queued
    waited: float | None = None  # how long that waiter waited for room (seconds)
    progress: str = ""  # what its load is doing now, as the backend reported it
    turns: Turns = field(default_factory=lambda: Turns())  # one request at a time, once it is serial
    base: str | None = None  # a LoRA adapter's slice: the key of the base instance whose model it lives on
    has_adapters: bool = False  # a base that adapters were put on: its requests take turns with theirs
    borrowers: Counter[str] = field(default_factory=Counter)  # other members answered from it now, by name

    def __post_init__(self) -> None:
        """An adapter on a shared base (``base``, with the base's ``turns``) takes turns with the base and its other
        adapters (one model, one state); a backend that answers one request at a time is serial from the start."""
        if self.backend.serial or self.base is not None:
            self.turns.serialize()

    def take_adapters(self) -> None:
        """This base gets adapters: its requests take turns with theirs from now on (after those in flight)."""
        self.has_adapters = True
        self.turns.serialize()

    @property
    def serial(self) -> bool:
        """Whether its requests run one at a time: its backend's rule, or adapters sharing one model."""
        return self.turns.serial

    @property
    def remote(self) -> bool:
        return self.backend.remote

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def footprint_bytes(self) -> int:
        return sum(self.footprint.values())

    def move(self, state: InstanceState) -> None:
        """Change state along the documented machine; anything else is a bug."""
        if state not in _MOVES.get(self.state, frozenset()):
            raise AssertionError(f"instance {self.key!r} cannot go from {self.state} to {state}")
        self.state = state

    def lease(self, thread: int, now: float) -> None:
        self.leases += 1
        self.lease_threads[thread] += 1
        self.last_used = now

    def release(self, thread: int, now: float) -> None:
        self.leases -= 1
        self.lease_threads[thread] -= 1
        if not self.lease_threads[thread]:
            del self.lease_threads[thread]
        self.last_used = now

    @property
    def in_use(self) -> int:
        """How many hold it or wait for it: its leases, and the threads promised one when its load ends.

        The one definition of "in use": the status row, the ledger and the policy all count this.
        """
        return self.leases + len(self.joiners - set(self.lease_threads))

    def leased_by(self, thread: int) -> bool:
        return self.lease_threads.get(thread, 0) > 0


@dataclass(eq=False)
class HeldMemory:
    """Memory of an unloaded instance that did not come back: something still holds its model object.

    It stays counted against its devices (and budgets, here and in the ledger)
    until the object is collected; ``holders`` names what holds it.
    """

    model_id: str
    key: str
    bytes: dict[str, int]
    holders: tuple[str, ...]
    watch: object = None  # the weak reference whose callback ends it (kept alive with it)

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def held_by(self) -> str:
        return ", ".join(self.holders) or SOMETHING


def dependents(instances: Iterable[Instance], key: str) -> list[Instance]:
    """The adapters living on the base instance ``key``."""
    return [instance for instance in instances if instance.base == key]


class TurnHeld(Exception):
    """The calling thread already has the turn on this instance (it would wait for itself).

    ``owner`` is what that turn is for (an adapter's or the base's instance key; "" for a free run).
    """

    def __init__(self, owner: str = "") -> None:
        super().__init__(owner)
        self.owner = owner


@dataclass(frozen=True)
class _Holder:
    """Who holds (or waits for) a turn: its thread, what it is for, and whether requests may nest in it."""

    thread: int
    owner: str
    nests: bool


class TurnTimeout(Exception):
    """The deadline passed while waiting for a turn; ``position`` is how many were still ahead."""

    def __init__(self, position: int) -> None:
        super().__init__(position)
        self.position = position


class TurnCancelled(Exception):
    """The request gave up waiting for its turn: whoever asked for it left (its stop was set)."""


#: How often a wait for a turn looks at its request's stop (a borrower that left ends within this).
_STOP_LOOK_S = 0.1


class Turns:
    """Requests to one instance, one at a time, first come first served, once it is serial.

    llama.cpp's ``Llama`` object is not thread-safe: two requests at once on
    one instance crash the process; a base with LoRA adapters on it has one
    model whose active adapter each request sets. Such an instance is serial
    from the start or from :meth:`serialize` on: a generation takes its turn
    after its lease; others queue (their position is told through
    ``on_wait``) until it ends, or until their deadline. Before that, requests
    run side by side as *free runs*, counted, so that once the instance turns
    serial no turn is granted until the free runs in flight have ended
    (putting the first adapter on a base never overlaps a base generation
    that started without a turn). Guarded by its own lock (a leaf: no call is
    made while it is held).
    """

    def __init__(self, *, serial: bool = False) -> None:
        self._changed = threading.Condition(threading.Lock())
        self._serial = serial
        self._queue: list[int] = []  # ticket numbers in arrival order; the first one holds the turn
        self._holders: dict[int, _Holder] = {}  # ticket -> who holds it (or waits for it), for turns
        self._free: dict[int, int] = {}  # ticket -> thread, for free runs in flight (granted before serial)
        self._nested: dict[int, int] = {}  # ticket -> thread: a request inside its own thread's turn
        self._next = 0

    @property
    def serial(self) -> bool:
        """Whether requests take turns now."""
        with self._changed:
            return self._serial

    def serialize(self) -> None:
        """From now on every request takes a turn; the first turn waits for the free runs in flight."""
        with self._changed:
            self._serial = True

    def enter(self, deadline: Deadline, on_wait: Callable[[int], None], *, owner: str = "",
              nests: bool = False, joins: bool | None = None, stop: threading.Event | None = None) -> int:
        """A ticket for one request: a free run at once while not serial, else its turn (see :meth:`take`).

        Deciding and counting happen under one lock, so a request either is
        a free run that :meth:`serialize` will wait for, or takes a turn.
        """
        with self._changed:
            if not self._serial:
                ticket, self._next = self._next, self._next + 1
                self._free[ticket] = threading.get_ident()
                return ticket
        return self.take(deadline, on_wait, owner=owner, nests=nests, joins=joins, stop=stop)

    def take(self, deadline: Deadline, on_wait: Callable[[int], None], *, owner: str = "",
             nests: bool = False, joins: bool | None = None, stop: threading.Event | None = None) -> int:
        """Wait for this thread's turn (``on_wait(ahead)`` when it must wait); returns its ticket.

        ``owner`` is what the turn is for (the model it makes the instance
        answer as). A turn taken with ``nests`` (a ``use()`` block) lets a
        request of the same thread for the same owner that ``joins`` (by
        default: that nests too; a generation inside the block) have a ticket
        at once inside it. Otherwise a thread that already has the turn or a
        free run (a second stream it iterates alongside the first, or another
        adapter of the same base) gets :class:`TurnHeld` at once: its own
        request would never end. The deadline passing raises
        :class:`TurnTimeout`; ``stop`` set while it waits (the request's
        asker left) raises :class:`TurnCancelled`.
        """
        me = threading.get_ident()
        joins = nests if joins is None else joins
        with self._changed:
            mine = [h for h in self._holders.values() if h.thread == me]
            if mine and joins and all(h.nests and h.owner == owner for h in mine):
                ticket, self._next = self._next, self._next + 1
                self._nested[ticket] = me
                return ticket
            if mine or me in self._free.values():
                raise TurnHeld(mine[0].owner if mine else "")
            ticket, self._next = self._next, self._next + 1
            self._queue.append(ticket)
            self._holders[ticket] = _Holder(me, owner, nests)
        told = 0
        try:
            while True:
                with self._changed:
                    ahead = self._ahead(ticket)
                    if ahead == 0:
                        return ticket
                    if deadline.expired:
                        raise TurnTimeout(ahead)
                if ahead != told:
                    told = ahead
                    on_wait(ahead)
                with self._changed:
                    if self._ahead(ticket) == ahead and not deadline.expired:
                        if stop is None:
                            wait_for(self._changed, deadline)
                        else:  # looked at often enough to end within a moment of the stop
                            left = deadline.remaining()
                            self._changed.wait(_STOP_LOOK_S if left is None else min(left, _STOP_LOOK_S))
                if stop is not None and stop.is_set():
                    raise TurnCancelled()
        except BaseException:
            self.give(ticket)
            raise

    def held_by(self, thread: int) -> bool:
        """Whether ``thread`` holds (or waits for) a turn, or runs free, on this instance now."""
        with self._changed:
            return any(h.thread == thread for h in self._holders.values()) or thread in self._free.values()

    def _ahead(self, ticket: int) -> int:
        """Requests before ``ticket``: the turns queued before it and every free run in flight. Lock held."""
        return self._queue.index(ticket) + len(self._free)

    def give(self, ticket: int) -> None:
        """The request with ``ticket`` is done (or gave up): the next one gets the turn."""
        with self._changed:
            if self._nested.pop(ticket, None) is not None:
                return
            if self._free.pop(ticket, None) is not None:
                self._changed.notify_all()
            elif ticket in self._holders:
                self._queue.remove(ticket)
                del self._holders[ticket]
                self._changed.notify_all()

    @property
    def waiting(self) -> int:
        """Requests waiting for their turn now."""
        with self._changed:
            return max(len(self._queue) - (0 if self._free else 1), 0)


def accounted_bytes(footprint: dict[str, int], placement: Placement, estimate: MemoryEstimate, *,
                    complete: bool = False) -> dict[str, int]:
    """Bytes a loaded instance holds against budgets: its footprint plus the estimate's runtime reserve.

    The reserve (KV cache and overhead) is the memory it needs once it
    generates, not only its weights; a ``complete`` footprint (llama.cpp
    allocates its KV cache and buffers at load) already counts it.
    """
    if not placement.devices:
        return {}
    reserve = 0 if complete else max(estimate.total_bytes - estimate.weights_bytes, 0) // len(placement.devices)
    return {device: footprint.get(device, 0) + reserve for device in placement.devices}
