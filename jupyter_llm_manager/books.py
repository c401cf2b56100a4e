"""The manager's books: every mutable fact of one manager, under one lock.

The registry (ids, aliases, pins), the instance table, the wait queue, the
settings, load failures and the ``version`` counter live here. Whoever
changes any of them holds the lock and calls :meth:`Books.touch`, which bumps
``version`` and wakes every waiter, so a waiting request looks again exactly
when something changed. The lock is never held while a backend, a
subscriber or a device probe runs (see the lock rule in ``manager.py``);
:meth:`Books.held_by_me` lets the event bus check it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from .errors import ManagerClosedError
from .instances import Instance
from .memory import DeviceMemory, device_budget, device_limit
from .policy import DeviceRoom, Holding, Snapshot
from .registry import Registry
from .settings import ManagerSettings
from .units import NEVER
from .waitqueue import WaitQueue

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["Books"]


class Books:
    """Registry, instances, queue and settings of one manager, and the lock guarding them."""

    def __init__(self, settings: ManagerSettings, clock: Callable[[], float]) -> None:
        self._lock = threading.RLock()
        self.changed = threading.Condition(self._lock)
        self._owner = threading.local()
        self.clock = clock  # monotonic: last use and keep-alive deadlines
        self.settings = settings
        self.registry = Registry()
        self.instances: dict[str, Instance] = {}
        self.failures: dict[str, str] = {}  # id -> why its last load failed
        self.last_used: dict[str, float] = {}  # key -> last use, kept after an unload
        self.queue = WaitQueue()
        self.version = 0
        self.closed = False
        self.limits_pending = False  # a cap or budget could not be restored yet (leases, pins, loads)

    # -- the lock ---------------------------------------------------------------------------

    def __enter__(self) -> Self:
        self._lock.acquire()
        self._owner.depth = getattr(self._owner, "depth", 0) + 1
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._owner.depth -= 1
        self._lock.release()

    def held_by_me(self) -> bool:
        """Whether the calling thread holds the lock (events must never be emitted then)."""
        return getattr(self._owner, "depth", 0) > 0

    def touch(self) -> None:
        """Something changed: bump the version and wake every waiter. Caller holds the lock."""
        self.version += 1
        self.changed.notify_all()

    def wait_for_change(self, since: int, timeout: float | None) -> None:
        """Wait until ``version`` moves past ``since``, the manager closes or ``timeout`` passes."""
        while self.version == since and not self.closed:
            if not self.changed.wait(timeout):
                return

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
        return Holding(instance.key, self.name_of(instance), state, dict(instance.bytes), instance.leases,
                       frozenset(t for t, n in instance.lease_threads.items() if n > 0),
                       registry.is_pinned(instance.key), registry.priority(instance.key),
                       registry.is_protected(instance.key), instance.last_used, instance.remote,
                       self.expires_at(instance), instance.loader if instance.state == "loading" else None)

    def snapshot(self, memories: Sequence[DeviceMemory], *, moving: set[str] | frozenset[str] = frozenset(),
                 without: str | None = None) -> Snapshot:
        """The policy's view now, leaving out the instance ``without`` and uncertain devices.

        A device in ``moving`` has a load in flight: its free memory already
        dropped by part of a reservation the books count in full, so when
        its budget depends on the free memory it is left out until the load ends.
        """
        holdings = tuple(self.holding(i) for i in self.instances.values() if i.key != without)
        settings = self.settings
        devices = {}
        for memory in memories:
            held = sum(h.bytes.get(memory.device, 0) for h in holdings)
            fraction, absolute = settings.memory_fraction, settings.memory_budget
            if memory.device in moving and held + memory.free_bytes < device_limit(memory, fraction=fraction,
                                                                                  absolute=absolute):
                continue
            budget = device_budget(memory, held_bytes=held, fraction=fraction, absolute=absolute)
            devices[memory.device] = DeviceRoom(memory.device, budget, memory.total_bytes)
        return Snapshot(holdings, devices, settings.max_loaded_models, self.clock(), self.queue.threads())
