"""Running an admitted load: the backend call, one retry after out-of-memory, publishing the result.

The thread that was admitted owns the instance (state ``loading``, its bytes
reserved in the state) and runs the load with no lock held; every other
thread asking for the same model waits on the instance's ``ready`` event.
On success the instance becomes ``loaded`` and is leased to the caller in the
same step, so nothing can evict it in between; on failure or interrupt it
leaves no trace (:meth:`Freeing.abandon`).
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable

from ...backends import LoadedModel
from ...backends.base import progress_reporter
from ...devices import DeviceProbe
from ...errors import OutOfMemoryDuringLoad, ResourceNotAvailableError
from ...estimates import record_load
from ...events import EventBus
from ...support import heavy_imports as imports
from ...support.interrupts import interrupts_deferred
from ...support.units import format_bytes
from ..instances import Instance, accounted_bytes
from ..policy import fit as policy
from ..policy.decision import fit_hint
from ..state import Leases, ManagerState
from ..unloading.evictions import Evictions
from ..unloading.freeing import Freeing

__all__ = ["DECLARED_TOLERANCE", "Loading"]

#: A declared size further than this from the measured one gets a warning event.
DECLARED_TOLERANCE = 0.2



def _imported(imported: tuple[tuple[str, float], ...]) -> list[str]:
    """``imported torch, transformers in 6.4 s`` when this load paid for first imports."""
    if not imported:
        return []
    return [f"imported {', '.join(name for name, _ in imported)} in {sum(s for _, s in imported):.1f} s"]


def _off_declared(declared: int | None, loaded: LoadedModel) -> str:
    """A warning when a declared size (``required_memory``, a task option's ``vram_gb``) is off by more than 20%."""
    measured = loaded.measured_bytes if loaded.measured_bytes is not None else sum(loaded.footprint.values())
    if not declared or not measured or abs(measured - declared) <= DECLARED_TOLERANCE * declared:
        return ""
    return (f"declared {format_bytes(declared)} (required_memory / vram_gb) but measured {format_bytes(measured)} "
            f"after the load ({(measured - declared) / declared:+.0%}): correct the declared size, which the "
            "budget counts")


class Loading:
    """Loads admitted instances; ``after_load`` runs (no lock held) once one is published."""

    def __init__(self, state: ManagerState, bus: EventBus, probe: DeviceProbe, leases: Leases, evictions: Evictions,
                 freeing: Freeing, after_load: Callable[[Instance, bool], None]) -> None:
        self._state = state
        self._bus = bus
        self._probe = probe
        self._leases = leases
        self._evictions = evictions
        self._freeing = freeing
        self._after_load = after_load

    def run(self, canonical: str, instance: Instance) -> None:
        """Load ``instance`` (owned by this thread) and publish it, promised to this thread.

        The caller then looks again and takes its lease: the promise keeps the
        model from being evicted in between, while the ``loaded`` event is
        delivered with no lease, lock or held-back Ctrl-C, so a slow subscriber
        delays only this thread. An instance whose ids were all unregistered
        or re-registered while it loaded is freed at once.
        """
        where = ", ".join(instance.placement.devices) or "remote"
        waited = f" after waiting {instance.waited:.1f} s for room" if instance.waited and instance.waited >= 0.1 else ""
        self._bus.emit("loading", canonical, message=where + waited, arrival=instance.arrival)
        reserved = instance.total_bytes
        before = imports.take_report()  # first imports this thread paid while planning (torch)
        started = time.perf_counter()
        loaded: LoadedModel | None = None
        published = False
        try:
            loaded = self._load_with_retry(canonical, instance)
            during = imports.take_report()  # and while loading (transformers): not the model's load time
            seconds = time.perf_counter() - started - sum(s for _, s in during)
            how = [loaded.how] if loaded.how else []
            off = _off_declared(instance.spec.required_memory, loaded)
            with self._bus.held(), interrupts_deferred():
                wanted = self._publish(canonical, instance, loaded, seconds, tuple(before + during))
                published = True
                loaded = None
                self._bus.emit("loaded", canonical, seconds=instance.load_seconds, bytes=instance.footprint_bytes,
                               message=" · ".join([where, *how, *_imported(instance.imported)]))
                if off:
                    self._bus.emit("warning", canonical, message=off)
        except BaseException as error:
            if published:  # an interrupt held back until the model was published: it stays loaded, unleased
                raise
            if loaded is not None:
                with self._state.lock:
                    if instance.loaded is None:
                        instance.loaded = loaded  # interrupted between the load and publishing: free it too
            loaded = None
            self._freeing.abandon(canonical, instance, error)
            raise
        if not wanted:
            self._evictions.release([(instance, "manual")])
            return
        self._after_load(instance, instance.total_bytes > reserved)

    def abandon(self, canonical: str, instance: Instance, error: BaseException) -> None:
        """Give up an admitted instance that never started loading (interrupted while making room)."""
        self._freeing.abandon(canonical, instance, error)

    def _publish(self, canonical: str, instance: Instance, loaded: LoadedModel, seconds: float,
                 imported: tuple[tuple[str, float], ...]) -> bool:
        """The instance is loaded (promised to this thread); ``False`` when no id reaches it any more."""
        state = self._state
        with state.lock:
            instance.loaded = loaded
            instance.imported = imported
            instance.move("loaded")
            instance.footprint = {} if instance.remote else dict(loaded.footprint)
            instance.bytes = accounted_bytes(instance.footprint, instance.placement, instance.estimate,
                                             complete=loaded.complete_footprint)
            instance.load_seconds = seconds
            instance.last_used = state.clock()
            instance.loader = None
            state.failures.pop(canonical, None)
            wanted = bool(state.registry.ids_of(instance.key))
            if wanted:
                instance.joiners.add(threading.get_ident())  # its lease is taken when it looks again
            else:
                instance.move("unloading")
            instance.ready.set()
            state.touch()
        record_load(instance.spec, instance.placement.devices, instance.estimate,  # estimates learn (no lock)
                    loaded.measured_bytes or sum(loaded.footprint.values()), loaded.complete_footprint)
        return wanted

    def _load_with_retry(self, canonical: str, instance: Instance) -> LoadedModel:
        """Load (what the backend reports meanwhile becomes ``load_progress`` events), retrying once."""

        def progress(message: str) -> None:
            with self._state.lock:
                instance.progress = message
            self._bus.emit("load_progress", canonical, message=message, arrival=instance.arrival)

        with progress_reporter(progress):
            return self._load_twice(canonical, instance)

    def _load_twice(self, canonical: str, instance: Instance) -> LoadedModel:
        """Load; on out-of-memory, evict what may make way there and try once more."""
        backend, spec, devices = instance.backend, instance.spec, instance.placement.devices
        try:
            return backend.load(spec, instance.placement)
        except OutOfMemoryDuringLoad as error:
            first_error = str(error)
        gc.collect()
        backend.release_memory(devices)
        request = self._request(canonical, instance)
        if not self._evictions.after_out_of_memory(request):
            raise self._out_of_memory(request, first_error)
        try:
            return backend.load(spec, instance.placement)
        except OutOfMemoryDuringLoad as error:
            raise self._out_of_memory(request, str(error)) from None

    def _request(self, canonical: str, instance: Instance) -> policy.Request:
        state = self._state
        with state.lock:
            return policy.Request(canonical, instance.key, dict(instance.bytes), state.registry.priority(instance.key),
                                  instance.loader)

    def _out_of_memory(self, request: policy.Request, detail: str) -> ResourceNotAvailableError:
        memories = self._probe()
        state = self._state
        with state.lock:
            shortfalls = policy.shortfalls(state.snapshot(memories, without=request.key), request)
        return ResourceNotAvailableError(
            f"Cannot load {request.name!r}: the device ran out of memory during the load ({detail}), also after "
            "evicting every model that may be evicted.", model_id=request.name, shortfalls=shortfalls,
            hint="Another process may be using the GPU (check nvidia-smi). " + fit_hint(request.needed))
