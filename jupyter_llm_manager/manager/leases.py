"""Leases: while one is held, its instance stays loaded and is never evicted.

A :class:`Ticket` is the one object that represents a lease, whoever holds it
(a ``with manager.use()`` block, a generation, a stream). It is granted under
the manager's lock and released exactly once, from any thread; the release
records the last use and wakes whoever waits for the instance to be idle.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ..backends.base import LoadedModel
from ..errors import LLMManagerError
from .instances import Instance
from .state import Books

__all__ = ["Leases", "Ticket"]


class Ticket:
    """One lease on one instance, granted to one thread; :meth:`release` ends it (idempotent)."""

    __slots__ = ("_leases", "_released", "canonical", "instance", "model_id", "thread")

    def __init__(self, leases: Leases, model_id: str, canonical: str, instance: Instance, thread: int) -> None:
        self.model_id = model_id
        self.canonical = canonical
        self.instance = instance
        self.thread = thread
        self._leases = leases
        self._released = False

    @property
    def loaded(self) -> LoadedModel:
        """The backend's loaded model (``.model``, ``.tokenizer``), valid while the lease is held."""
        loaded = self.instance.loaded
        if loaded is None or self._released:
            raise LLMManagerError(f"the lease on {self.model_id!r} was released: use the model inside it")
        return loaded

    @property
    def held(self) -> bool:
        return not self._released

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._leases.release(self)

    def __repr__(self) -> str:
        return f"<Ticket {self.model_id!r} {'held' if self.held else 'released'}>"


class Leases:
    """Grants and releases tickets; ``on_idle`` runs (with no lock held) when an instance's last lease ends."""

    def __init__(self, books: Books, on_idle: Callable[[Instance], None]) -> None:
        self._books = books
        self._on_idle = on_idle

    def grant(self, model_id: str, canonical: str, instance: Instance) -> Ticket:
        """A lease for the calling thread on a loaded instance. Caller holds the lock."""
        thread = threading.get_ident()
        instance.lease(thread, self._books.clock())
        return Ticket(self, model_id, canonical, instance, thread)

    def release(self, ticket: Ticket) -> None:
        instance = ticket.instance
        books = self._books
        with books.lock:
            instance.release(ticket.thread, books.clock())
            books.touch()
            idle = not instance.leases
        if idle:
            self._on_idle(instance)
