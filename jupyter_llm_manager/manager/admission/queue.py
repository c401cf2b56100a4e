"""Requests waiting for capacity, grouped by the model they wait for, in a fair order.

Groups are served in the order of their earliest waiter, and all waiters of a
group are served by one load. One exception keeps the queue from deadlocking
itself: a group with a waiter whose thread holds leases goes first, since
others may be waiting for exactly those leases to end. Pure bookkeeping,
guarded by the manager's lock.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..instances import Instance

__all__ = ["WaitQueue", "Waiter"]


@dataclass(eq=False)
class Waiter:
    """One thread waiting for room to load one model."""

    key: str
    name: str
    thread: int
    order: int
    holds_leases: bool
    waiting_for: str = ""  # the last plan's reason, for status rows and timeout messages
    blocked_since: float | None = None  # when a plan first said "wait" (planning itself is no waiting)
    wake: threading.Condition | None = None  # its own wake-up, on the manager's lock: only it is woken
    ledger: int | None = None  # its arrival in the machine-wide queue, once it waits on other kernels
    needed: dict[str, int] = field(default_factory=dict)  # bytes per device its last plan asked for
    published: dict[str, int] = field(default_factory=dict)  # what its row in the machine-wide queue says
    unanswered: frozenset[str] = frozenset()  # other kernels that did not answer its requests (member ids)
    unanswered_names: tuple[str, ...] = ()
    ahead_elsewhere: int = 0  # requests of other kernels before it in the machine-wide queue
    polls: bool = False  # what it waits for is in other kernels: it looks again every moment
    base: Instance | None = None  # a LoRA adapter sharing its base: the base's instance (leased by its thread)
    row: int | None = None  # its id in the ledger's rows of waits for models in use, once it wrote one


class WaitQueue:
    """Waiters by arrival; :meth:`keys` gives the order in which models are placed."""

    def __init__(self) -> None:
        self._waiters: list[Waiter] = []
        self._arrivals = itertools.count()
        self.planner: Waiter | None = None  # the waiter computing a plan now (one at a time)

    def add(self, key: str, name: str, thread: int, *, holds_leases: bool) -> Waiter:
        waiter = Waiter(key, name, thread, next(self._arrivals), holds_leases)
        self._waiters.append(waiter)
        return waiter

    def remove(self, waiter: Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
        if self.planner is waiter:
            self.planner = None

    def serve(self, key: str) -> list[Waiter]:
        """Every waiter for ``key`` leaves the queue (its model was placed); returns them, to be woken."""
        served = [w for w in self._waiters if w.key == key]
        self._waiters = [w for w in self._waiters if w.key != key]
        return served

    def next_planner(self) -> Waiter | None:
        """The one waiter a change can serve: the earliest of the model placed next, when nobody plans."""
        if self.planner is not None or not self._waiters:
            return None
        return self.first(self.keys()[0])

    def all(self) -> list[Waiter]:
        return list(self._waiters)

    def keys(self) -> list[str]:
        """Model keys in the order they are placed."""
        first: dict[str, tuple[bool, int]] = {}
        for waiter in self._waiters:
            rank = (not waiter.holds_leases, waiter.order)
            first[waiter.key] = min(first.get(waiter.key, rank), rank)
        return sorted(first, key=first.__getitem__)

    def position(self, key: str) -> int | None:
        """1 for the model placed next; ``None`` when nobody waits for ``key``."""
        keys = self.keys()
        return keys.index(key) + 1 if key in keys else None

    def may_plan(self, waiter: Waiter) -> bool:
        """Whether ``waiter`` may compute a plan now: its model is next and nobody else is planning."""
        keys = self.keys()
        return bool(keys) and keys[0] == waiter.key and self.planner in (None, waiter)

    def first(self, key: str) -> Waiter | None:
        """The earliest waiter for ``key``."""
        return min((w for w in self._waiters if w.key == key), key=lambda w: w.order, default=None)

    def names_ahead(self, key: str) -> list[str]:
        """The models placed before ``key``."""
        keys = self.keys()
        ahead = keys[:keys.index(key)] if key in keys else keys
        names = {w.key: w.name for w in self._waiters}
        return [names[k] for k in ahead]

    def waiting_for(self, key: str) -> str:
        return next((w.waiting_for for w in self._waiters if w.key == key and w.waiting_for), "")

    def threads_for(self, key: str) -> set[int]:
        return {w.thread for w in self._waiters if w.key == key}

    def threads(self) -> frozenset[int]:
        return frozenset(w.thread for w in self._waiters)

    def __len__(self) -> int:
        return len(self._waiters)

    def __contains__(self, waiter: object) -> bool:
        return waiter in self._waiters
