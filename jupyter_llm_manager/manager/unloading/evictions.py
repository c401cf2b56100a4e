"""Every way an instance is taken out: restored limits, keep-alive, out-of-memory retries, unloads.

Each follows the same two steps: decide under the lock (a plan from
:mod:`~jupyter_llm_manager.manager.policy`, its victims marked ``unloading`` at once so
nobody can lease them), then free them with no lock held
(:class:`~.freeing.Freeing`, which emits the events).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Sequence
from dataclasses import replace

from ...devices import DeviceProbe
from ...errors import ModelInUseError
from ...events import EventBus, EvictionReason
from ...reports import UnloadReport
from ...support.deadlines import Deadline
from ...support.interrupts import interrupts_deferred
from ..instances import Instance, dependents
from ..policy import fit as policy
from ..state import ManagerState
from .freeing import Freeing

__all__ = ["Evictions"]

Victims = list[tuple[Instance, EvictionReason]]


class Evictions:
    """Plans evictions on a snapshot and executes them; the only caller of :meth:`Freeing.release`."""

    def __init__(self, state: ManagerState, bus: EventBus, probe: DeviceProbe, freeing: Freeing) -> None:
        self._state = state
        self._bus = bus
        self._probe = probe
        self._freeing = freeing

    def take_out(self, evictions: Iterable[policy.Eviction]) -> Victims:
        """Mark a plan's victims ``unloading`` (those still loaded and idle). Caller holds the lock."""
        victims: Victims = []
        for eviction in evictions:
            instance = self._state.instances.get(eviction.key)
            if instance is not None and instance.state == "loaded" and not instance.leases:
                for adapter in dependents(self._state.instances.values(), instance.key):  # they go with their base
                    if adapter.state == "loaded" and not adapter.leases:
                        adapter.move("unloading")
                        victims.append((adapter, eviction.reason))
                instance.move("unloading")
                victims.append((instance, eviction.reason))
        if victims:
            self._state.touch()
        return victims

    def release(self, victims: Victims, note: str = "") -> list[UnloadReport]:
        """Free marked victims one by one (no lock held); a Ctrl-C meanwhile is raised once all are freed.

        Their events reach subscribers once every victim is freed: a slow
        subscriber never keeps a taken-out victim's memory.
        """
        with self._bus.held(), interrupts_deferred():
            return [self._freeing.release(instance, reason, note) for instance, reason in victims]

    # -- for other kernels (cooperation) -------------------------------------------------------

    def for_other_kernel(self, keys: Sequence[str], priority: int, requester: str) -> list[UnloadReport]:
        """Evict those of ``keys`` that may make way now for another kernel's request of ``priority``.

        The answer is the policy's (:func:`~..policy.fit.yield_room`), the same
        rule as for this manager's own requests. Returns what each eviction freed
        (the requester tells its notebook what it evicted, and where).
        """
        state = self._state
        with state.lock:
            victims = self.take_out(policy.yield_room(state.snapshot(()), keys, priority).evictions)
        return self.release(victims, f"for {requester}")

    def unload_by_name(self, model_id: str, requester: str) -> str:
        """Unload ``model_id`` if it is idle and unpinned (a click in another kernel's JupyterLab panel); what happened.

        A pin is this kernel's word that the model stays: only this kernel unloads a pinned model.
        """
        state = self._state
        with state.lock:
            canonical = state.registry.resolve_quiet(model_id)
            key = state.registry.keys.get(canonical or "")
            pinned = key is not None and state.registry.is_pinned(key)
        if key is None:
            return f"{model_id!r} is not registered here"
        if pinned:
            return f"{model_id!r} is pinned: it stays (it can be unpinned in its own notebook)"
        report = self.unload(key, state.deadline(0), quiet=True, note=f"for {requester}")
        if report is None:
            return f"{model_id!r} is not loaded, or in use: it stays"
        return f"unloaded {model_id!r} for {requester}: {report.freed_str} freed"

    # -- planned evictions ---------------------------------------------------------------------

    def enforce(self, spare: str | None = None) -> list[UnloadReport]:
        """Bring the count cap and every budget back within limits (what cannot go now is retried later)."""
        memories = self._probe()
        state = self._state
        with state.lock:
            snapshot = state.snapshot(memories, moving=state.loading_devices())
            plan = policy.enforce(snapshot, spare=spare)
            victims = self.take_out(plan.evictions)
            state.limits_pending = not plan.admitted or len(snapshot.devices) < len(memories)
        return self.release(victims)

    def expire(self) -> list[UnloadReport]:
        """Unload every instance idle longer than its keep-alive."""
        state = self._state
        with state.lock:
            victims = self.take_out(policy.expire(state.snapshot(())).evictions)
        return self.release(victims)

    def after_out_of_memory(self, request: policy.Request) -> list[UnloadReport]:
        """Evict everything that may make way on the request's devices (before one retry)."""
        memories = self._probe()
        state = self._state
        with state.lock:
            victims = self.take_out(policy.evict_everything_for(state.snapshot(memories), request).evictions)
        return self.release(victims)

    def next_expiry(self) -> float | None:
        """Seconds until the next instance expires (monotonic clock); ``None`` when none will."""
        state = self._state
        with state.lock:
            due = [t for t in map(state.expires_at, state.instances.values()) if t is not None]
            return max(min(due) - state.clock(), 0.0) if due else None

    # -- unloading by hand ---------------------------------------------------------------------

    def unload(self, key: str, deadline: Deadline, *, quiet: bool = False, note: str = "") -> UnloadReport | None:
        """Unload the instance of ``key`` once idle; ``None`` when it is not loaded (``note``: the event's message,
        ``for other.ipynb`` when another notebook asked).

        Waits until ``deadline`` for leases to end and a load in flight to
        finish, then raises :class:`ModelInUseError` (or returns ``None`` when
        ``quiet``). A lease held by the calling thread (or promised to it, by
        the load whose ``loaded`` event it is handling) fails at once: waiting
        for itself would never end. Another thread's promise does not stop it.
        """
        me = threading.get_ident()
        state = self._state
        with state.lock:
            while True:
                instance = state.instances.get(key)
                if instance is None or instance.state not in ("loading", "loaded"):
                    return None
                mine = instance.leased_by(me) or instance.loader == me or me in instance.joiners
                if instance.state == "loaded" and not instance.leases and not mine:
                    victims = self.take_out([policy.Eviction(key, state.name_of(instance), "manual", 0)])
                    break
                if mine or deadline.expired:
                    if quiet:
                        return None
                    raise ModelInUseError(state.name_of(instance), max(instance.leases, int(mine)),
                                          loading=instance.state == "loading")
                state.wait_for_change(state.version, deadline)
        return _of_the_base(self.release(victims, note), key)

    def unload_all(self, deadline: Deadline, *, quiet: bool) -> list[UnloadReport]:
        """Unload every loaded instance, pinned ones included."""
        state = self._state
        with state.lock:
            keys = [key for key, instance in state.instances.items() if instance.state == "loaded"]
        reports = [self.unload(key, deadline, quiet=quiet) for key in keys]
        return [report for report in reports if report is not None]


def _of_the_base(reports: list[UnloadReport], key: str) -> UnloadReport:
    """One report for an unload by hand: the instance asked for, with its adapters (they go with a base)."""
    base = next(report for report in reports if report.instance == key)
    adapters = [report for report in reports if report is not base]
    if not adapters:
        return base
    return replace(base, freed_bytes=sum(r.freed_bytes for r in reports), seconds=sum(r.seconds for r in reports),
                   held_bytes=sum(r.held_bytes for r in reports), adapters=tuple(r.model_id for r in adapters))
