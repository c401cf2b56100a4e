"""Letting go of instances for real: the only path by which memory leaves the manager.

Every unload, eviction, expiry and failed load ends in :meth:`Freeing.release`
or :meth:`Freeing.abandon`, which share one teardown: drop every reference,
``gc.collect()``, empty the device caches, check through a weak reference that
the model object is gone and, when it is not, name what holds it. The state
change and the event is emitted in the same step, with interrupts held back,
so the state and the events always agree.
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any

from ...backends import Backend, release_frames
from ...devices import DeviceProbe
from ...errors import ResourceNotAvailableError
from ...events import EventBus, EventKind, EvictionReason
from ...reports import GarbageReport, UnloadReport
from ...support.interrupts import interrupts_deferred
from ...support.referrers import HOLDER_HINT, describe_holders
from ...support.system import psutil
from ...support.units import excerpt
from ..instances import HeldMemory, Instance
from ..state import ManagerState

__all__ = ["Freeing"]

#: Holders are looked for in the whole heap only where a garbage collection took less than this: walking it once
#: costs about as much, and naming them must cost at most 0.1 s more than the collection itself.
_SCAN_WHEN_GC_UNDER_S = 0.1

log = logging.getLogger(__name__)


class Freeing:
    """Releases instances that the state marked ``unloading``, and failed loads."""

    def __init__(self, state: ManagerState, bus: EventBus, probe: DeviceProbe,
                 backends: Callable[[], list[Backend]]) -> None:
        self._state = state
        self._bus = bus
        self._probe = probe
        self._backends = backends
        self._lingering: list[tuple[str, weakref.ref]] = []
        self._lingering_lock = threading.Lock()

    def release(self, instance: Instance, reason: EvictionReason, note: str = "") -> UnloadReport:
        """Free an instance in state ``unloading``; emit ``unloaded`` (manual) or ``evicted``.

        The events reach subscribers after the free is complete and Ctrl-C is
        no longer held back.
        """
        with self._bus.held(), interrupts_deferred():
            state = self._state
            with state.lock:
                model_id = state.name_of(instance)
            started = time.perf_counter()
            devices = instance.placement.devices
            before = instance.backend.memory_in_use(devices)
            target, collecting = self._teardown(instance)
            after = instance.backend.memory_in_use(devices)
            alive = target() if target is not None else None
            # naming what holds it is bounded: a heap too large to walk within the budget is not walked
            holders = tuple(describe_holders(alive, scan=collecting < _SCAN_WHEN_GC_UNDER_S)) if alive is not None \
                else ()
            collected = alive is None
            # a backend whose unload frees the memory whatever holds the object (llama.cpp): it all came back
            emptied = collected or instance.backend.frees_on_unload
            if before:  # measured (CUDA): what the device allocator really got back
                freed_on = {d: max(before[d] - after.get(d, 0), 0) for d in before}
            else:  # not measurable (CPU): the footprint, once the object is gone or emptied
                freed_on = dict(instance.footprint) if emptied else {}
            held = {d: size - freed_on.get(d, 0) for d, size in instance.footprint.items()
                    if size > freed_on.get(d, 0)} if not emptied else {}
            report = UnloadReport(model_id, instance.key, reason, sum(freed_on.values()),
                                  time.perf_counter() - started, collected=collected, holders=holders,
                                  held_bytes=sum(held.values()))
            if not collected and target is not None:
                with self._lingering_lock:
                    self._lingering.append((model_id, target))
            state = self._state
            with state.lock:
                instance.move("unloaded")
                if state.instances.get(instance.key) is instance:
                    del state.instances[instance.key]
                state.last_used[instance.key] = instance.last_used
                if held and alive is not None:  # it stays counted until the object is collected
                    self._hold(HeldMemory(model_id, instance.key, held, holders), alive)
                state.touch()
            del alive
            kind: EventKind = "unloaded" if reason == "manual" else "evicted"
            self._bus.emit(kind, model_id, reason=reason, seconds=report.seconds, bytes=report.freed_bytes,
                           message=note)
            if not emptied:
                self._bus.emit("warning", model_id, message=f"{report} {HOLDER_HINT}")
        return report

    def abandon(self, canonical: str, instance: Instance, error: BaseException) -> None:
        """Undo a failed or interrupted load: out of the state, memory released, waiters told.

        The error's frames lose their locals: a failed load's half-built
        tensors must not live on in the traceback a notebook keeps.
        """
        with self._bus.held(), interrupts_deferred():
            release_frames(error)
            interrupted = isinstance(error, KeyboardInterrupt)
            message = "interrupted" if interrupted else excerpt(str(error))
            state = self._state
            with state.lock:
                instance.error = error
                instance.move("failed")
                if state.instances.get(instance.key) is instance:
                    del state.instances[instance.key]
                if not interrupted and not isinstance(error, ResourceNotAvailableError):
                    state.failures[canonical] = message  # the model itself failed
                instance.ready.set()
                state.touch()
            self._teardown(instance)
            self._bus.emit("load_failed", canonical, message=message)

    def _teardown(self, instance: Instance) -> tuple[weakref.ref[Any] | None, float]:
        """Drop the backend's object and every reference to it; collect; empty device caches.

        Returns a weak reference to the model object, and how long the garbage collection took (what walking
        the heap costs here).
        """
        with self._state.lock:
            loaded, instance.loaded = instance.loaded, None
        # a LoRA adapter's model is its base's: freeing the adapter does not free the model
        target = _weak(loaded.model) if loaded is not None and not loaded.shared else None
        if loaded is not None:
            instance.backend.unload(loaded)
        del loaded
        collecting = 0.0
        if target is None or target() is not None:  # gone by reference counting: no full collection needed
            started = time.perf_counter()
            gc.collect()
            collecting = time.perf_counter() - started
        instance.backend.release_memory(instance.placement.devices)
        return target, collecting

    def _hold(self, held: HeldMemory, alive: Any) -> None:
        """Count ``held`` until ``alive`` is collected; then the room is free and waiting requests are woken.
        Caller holds the state's lock."""
        state = self._state
        held.watch = weakref.ref(alive, partial(_let_go, weakref.ref(state), held))
        state.held.append(held)

    # -- what is still alive ---------------------------------------------------------------------

    def lingering(self) -> dict[str, tuple[str, ...]]:
        """Unloaded models whose objects are still alive, and what holds each."""
        with self._lingering_lock:
            self._lingering = [(i, ref) for i, ref in self._lingering if ref() is not None]
            entries = list(self._lingering)
        found = {}
        for model_id, ref in entries:
            alive = ref()
            if alive is not None:
                found[model_id] = tuple(describe_holders(alive))
            del alive
        return found

    def collect_garbage(self) -> GarbageReport:
        """Collect garbage and empty device caches without unloading; report what is still alive."""
        started = time.perf_counter()
        alive_before = set(self.lingering())
        process = psutil.Process()
        process_before = process.memory_info().rss
        before = {d.device: d.total_bytes - d.free_bytes for d in self._probe()}
        gc.collect()
        for backend in self._backends():
            backend.release_memory(tuple(before))
        after = {d.device: d.total_bytes - d.free_bytes for d in self._probe()}
        lingering = self.lingering()
        collected = tuple(sorted(alive_before - set(lingering)))
        return GarbageReport(before, after, lingering, time.perf_counter() - started, collected, process_before,
                             process.memory_info().rss)


def _let_go(state_ref: weakref.ref[ManagerState], held: HeldMemory, _gone: weakref.ref[Any]) -> None:
    """The object of ``held`` was collected: its memory stops counting (on a thread of its own: the collection
    may run anywhere, even where the state's lock is held by another thread)."""
    def forget() -> None:
        state = state_ref()
        if state is None:
            return
        with state.lock:
            if held in state.held:
                state.held.remove(held)
                state.touch(everyone=True)

    threading.Thread(target=forget, name="llm-manager-collected", daemon=True).start()


def _weak(obj: Any) -> weakref.ref[Any] | None:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None
