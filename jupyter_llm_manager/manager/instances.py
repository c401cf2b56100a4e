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
from dataclasses import dataclass, field
from typing import Literal

from ..backends.base import Backend, LoadedModel, Placement
from ..config.spec import ModelSpec
from ..estimates import MemoryEstimate

__all__ = ["Instance", "InstanceState", "accounted_bytes"]

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

    def leased_by(self, thread: int) -> bool:
        return self.lease_threads.get(thread, 0) > 0


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
