"""The manager's state: every mutable fact of one manager, under one lock; and the leases on its instances.

The registry (ids, aliases, pins), the instance table, the wait queue, the
settings, load failures and the ``version`` counter live here. Whoever
changes any of them holds ``lock`` and calls :meth:`ManagerState.touch`, which bumps
``version`` and wakes the waits a change can serve: the one queued request
that may plan next (each waits on its own condition), and the few waits for a
lease to end or an instance to leave. A change to the registry wakes every
queued request (``everyone=True``): its model may be gone. The lock is never held while a backend, a
subscriber or a device probe runs (see the lock rule in the package docstring).
It is taken with ``with state.lock:`` only: the lock's own C-level enter and
exit, so a Ctrl-C can never leave it held.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from ..backends.base import LoadedModel
from ..config.registry import Registry
from ..config.settings import ManagerSettings
from ..devices import DeviceMemory, device_budget, device_limit
from ..errors import LLMManagerError, ManagerClosedError
from ..support.deadlines import Clock, Deadline, wait_for
from ..support.units import NEVER
from .admission.queue import WaitQueue
from .instances import HeldMemory, Instance, Turns, dependents
from .policy.fit import DeviceRoom, Elsewhere, Holding, Snapshot

__all__ = ["NOBODY_ELSE", "Leases", "ManagerState", "Ticket"]

#: No other kernel: a manager that does not cooperate, or a machine of its own.
NOBODY_ELSE = Elsewhere()


class ManagerState:
    """Registry, instances, queue and settings of one manager, and the lock guarding them."""

    def __init__(self, settings: ManagerSettings, clock: Clock) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.clock = clock  # monotonic: last use and keep-alive deadlines
        self.settings = settings
        self.registry = Registry()
        self.instances: dict[str, Instance] = {}
        self.failures: dict[str, str] = {}  # id -> why its last load failed
        self.last_used: dict[str, float] = {}  # key -> last use, kept after an unload
        self.queue = WaitQueue()
        self.version = 0
        self.closed = False
        self.retiring: set[str] = set()  # instance keys to unload when idle (a task's previous option)
        self.held: list[HeldMemory] = []  # unloaded instances' memory that did not come back (still counted)
        self.limits_pending = False  # a cap or budget could not be restored yet (leases, pins, loads)
        self.on_change: Callable[[], None] | None = None  # cooperation: publish to the ledger soon (cheap, no I/O)

    def touch(self, *, everyone: bool = False) -> None:
        """Something changed: bump the version and wake who it may concern. Caller holds the lock."""
        self.version += 1
        self.changed.notify_all()
        if self.on_change is not None:
            self.on_change()
        waiters = self.queue.all() if everyone else [w for w in [self.queue.next_planner()] if w is not None]
        for waiter in waiters:
            if waiter.wake is not None:
                waiter.wake.notify()

    def wake_waiters(self) -> None:
        """Every queued request looks again now (another kernel let go of room): the version moves (the waits
        end on a new version), though nothing here changed."""
        with self.lock:
            self.version += 1
            self.changed.notify_all()
            for waiter in self.queue.all():
                if waiter.wake is not None:
                    waiter.wake.notify()

    def wake_planner(self) -> None:
        """Let the request that may plan next do so (the planner's turn was given up). Caller holds the lock."""
        waiter = self.queue.next_planner()
        if waiter is not None and waiter.wake is not None:
            waiter.wake.notify()

    def new_wake(self) -> threading.Condition:
        """A condition on the state's lock that one waiter waits on alone."""
        return threading.Condition(self.lock)

    def wait_for_change(self, since: int, deadline: Deadline, wake: threading.Condition | None = None) -> None:
        """Wait until ``version`` moves past ``since`` or ``deadline`` passes. Caller holds the lock.

        ``wake``: the caller's own condition (a queued request), else the shared one.

        Closing the manager moves the version, so it wakes every waiter; a wait
        that starts after that (close() unloading a model still in use) waits
        for the lease to end like any other.
        """
        while self.version == since and not deadline.expired:
            wait_for(wake or self.changed, deadline)

    def deadline(self, seconds: float) -> Deadline:
        """A deadline ``seconds`` from now on this manager's clock."""
        return Deadline(seconds, self.clock)

    def check_open(self) -> None:
        if self.closed:
            raise ManagerClosedError()

    # -- facts about instances ----------------------------------------------------------------

    def name_of(self, instance: Instance) -> str:
        """The first registered id of an instance (its spec's id once none is left)."""
        names = self.registry.ids_of(instance.key)
        return names[0] if names else instance.spec.id

    def keep_alive_of(self, instance: Instance) -> float | None:
        own = self.registry.keep_alive(instance.key)
        value = own if own is not None else self.settings.keep_alive
        return None if value is None or value == NEVER else value

    def expires_at(self, instance: Instance) -> float | None:
        """When an idle, unpinned, loaded instance expires (monotonic); ``None``: never."""
        keep = self.keep_alive_of(instance)
        if keep is None or instance.leases or instance.state != "loaded" or self.registry.is_pinned(instance.key):
            return None
        return instance.last_used + keep

    def loading_devices(self) -> set[str]:
        """Devices with a load in flight: their free memory is moving, so limits wait for it."""
        return {d for i in self.instances.values() if i.state == "loading" and i.placement for d in i.placement.devices}

    def holds_leases(self, thread: int) -> bool:
        return any(i.leased_by(thread) for i in self.instances.values())

    # -- what the policy sees ------------------------------------------------------------------

    def holding(self, instance: Instance) -> Holding:
        registry = self.registry
        state = instance.state if instance.state in ("loading", "loaded") else "unloading"
        # LoRA adapters: a pinned one pins its base; one still leaving keeps its base in place until it is gone
        adapters = dependents(self.instances.values(), instance.key)
        pinned = registry.is_pinned(instance.key) or any(registry.is_pinned(a.key) for a in adapters)
        leaving = sum(1 for a in adapters if a.state != "loaded")
        # a thread promised a lease (it waited for this load) counts as holding one: never evicted under it
        return Holding(instance.key, self.name_of(instance), state, dict(instance.bytes),
                       instance.in_use + leaving,
                       frozenset(t for t, n in instance.lease_threads.items() if n > 0) | instance.joiners,
                       pinned, registry.priority(instance.key),
                       registry.is_protected(instance.key), instance.last_used, instance.remote,
                       self.expires_at(instance), instance.loader if instance.state == "loading" else None,
                       base=instance.base)

    def snapshot(self, memories: Sequence[DeviceMemory], *, moving: set[str] | frozenset[str] = frozenset(),
                 without: str | None = None, elsewhere: Elsewhere = NOBODY_ELSE) -> Snapshot:
        """The policy's view now, leaving out the instance ``without`` and uncertain devices.

        A device in ``moving`` has a load in flight: its free memory already
        dropped by part of a reservation the state counts in full, so when
        its budget depends on the free memory it is left out until the load ends.
        ``elsewhere``: what the other kernels hold (their bytes count once in the
        budget: the device's free memory already lacks them), the room the requests
        ahead of this one will take (the free memory still has it), and those requests.
        """
        own = tuple(self.holding(i) for i in self.instances.values() if i.key != without) + tuple(
            Holding(f"held-{index}", held.model_id, "loaded", dict(held.bytes), leases=1, held_by=held.held_by)
            for index, held in enumerate(self.held))
        holdings = own + elsewhere.holdings
        settings = self.settings
        devices = {}
        for memory in memories:
            held = sum(h.bytes.get(memory.device, 0) for h in holdings if not h.claim)
            fraction, absolute = settings.memory_fraction, settings.memory_budget
            if memory.device in moving and held + memory.free_bytes < device_limit(memory, fraction=fraction,
                                                                                  absolute=absolute):
                continue
            budget = device_budget(memory, held_bytes=held, fraction=fraction, absolute=absolute)
            devices[memory.device] = DeviceRoom(memory.device, budget, memory.total_bytes)
        return Snapshot(holdings, devices, settings.max_loaded_models, self.clock(), self.queue.threads(),
                        self.limits_pending, max_adapters=settings.max_loaded_adapters, ahead=elsewhere.ahead)


# -- leases: while one is held, its instance stays loaded and is never evicted ------------------

class Ticket:
    """One lease on one instance, granted to one thread; :meth:`release` ends it (idempotent)."""

    __slots__ = ("_leases", "_released", "canonical", "companion", "instance", "model_id", "thread", "turn")

    def __init__(self, leases: Leases, model_id: str, canonical: str, instance: Instance, thread: int) -> None:
        self.model_id = model_id
        self.canonical = canonical
        self.instance = instance
        self.thread = thread
        self._leases = leases
        self._released = False
        self.companion: Ticket | None = None  # a LoRA adapter's lease on its base: released with this one
        #: A ``use()`` lease of a model sharing one base model with others: its turn there, held while it lasts
        #: (the model answers as this one until the lease ends); given back with the lease.
        self.turn: tuple[Turns, int] | None = None

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
        if self._released:
            return
        self._released = True
        if self.turn is not None:
            turns, ticket = self.turn
            self.turn = None
            turns.give(ticket)  # a leaf lock: it cannot fail half way
        try:
            self._leases.release(self)
        finally:
            if self.companion is not None:
                self.companion.release()

    def __repr__(self) -> str:
        return f"<Ticket {self.model_id!r} {'held' if self.held else 'released'}>"


class Leases:
    """Grants and releases tickets; ``on_idle`` runs (with no lock held) when an instance's last lease ends."""

    def __init__(self, state: ManagerState, on_idle: Callable[[Instance], None]) -> None:
        self._state = state
        self._on_idle = on_idle

    def grant(self, model_id: str, canonical: str, instance: Instance) -> Ticket:
        """A lease for the calling thread on a loaded instance. Caller holds the lock."""
        thread = threading.get_ident()
        instance.lease(thread, self._state.clock())
        return Ticket(self, model_id, canonical, instance, thread)

    def release(self, ticket: Ticket) -> None:
        instance = ticket.instance
        state = self._state
        with state.lock:
            instance.release(ticket.thread, state.clock())
            state.touch()
            idle = not instance.leases
        if idle:
            self._on_idle(instance)
