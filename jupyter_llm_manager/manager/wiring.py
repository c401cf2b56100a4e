"""The composition root: the parts of one manager, made and connected in one place.

Each part has one job (see the package docstring); here they get the parts
they call. Nothing else constructs a part, so the shape of a manager is read
from this one function, and a test or an embedding passes its own clock,
device probe and backend factory through :func:`wire`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from ..backends import Backend, BackendCache
from ..config.settings import ManagerSettings
from ..devices import DeviceProbe
from ..estimates import EstimateCache
from ..events import EventBus
from .adapters import AdapterSpecs
from .admission.loading import Loading
from .admission.requests import Admission
from .admission.warmup import WarmUp
from .cooperation import Cooperation
from .generations import Generations
from .planning import Planner
from .registration import Persistence, Registration
from .sharing.borrowing import Borrowing
from .sharing.lending import Lending, lending_routes
from .state import Leases, ManagerState
from .status import StatusView
from .tasks import TaskSelection
from .unloading.evictions import Evictions
from .unloading.freeing import Freeing
from .unloading.limits import Limits

__all__ = ["Parts", "shut_down", "wire"]


@dataclass(frozen=True)
class Parts:
    """What the facade calls: one object per job."""

    state: ManagerState
    bus: EventBus
    backends: BackendCache
    estimates: EstimateCache
    freeing: Freeing
    evictions: Evictions
    limits: Limits
    cooperation: Cooperation
    adapters: AdapterSpecs
    admission: Admission
    registration: Registration
    tasks: TaskSelection
    persistence: Persistence
    status: StatusView
    planner: Planner
    generations: Generations
    lending: Lending
    borrowing: Borrowing
    warmup: WarmUp


def wire(settings: ManagerSettings, config_path: Path | None, *, clock: Callable[[], float], probe: DeviceProbe,
         backend_factory: Callable[[str], Backend], load: Callable[[str], object]) -> Parts:
    """Every part of a manager with ``settings``, connected; ``load`` is what the warm-up calls (the facade's)."""
    state = ManagerState(settings, clock)
    bus = EventBus()
    backends = BackendCache(backend_factory)
    estimates = EstimateCache()
    freeing = Freeing(state, bus, probe, backends.created)
    evictions = Evictions(state, bus, probe, freeing)
    limits = Limits(state, bus, evictions)
    leases = Leases(state, limits.after_idle)
    loading = Loading(state, bus, probe, leases, evictions, freeing, limits.after_load)
    cooperation = Cooperation(state, bus, evictions.for_other_kernel, evictions.unload_by_name)
    adapters = AdapterSpecs(state, backends)
    admission = Admission(state, bus, probe, backends, estimates, leases, evictions, loading, cooperation)
    generations = Generations(bus, admission.acquire, state.deadline)
    borrowing = Borrowing(state, bus, cooperation, backends)
    generations.borrow = borrowing.borrow
    lending = Lending(state, bus, generations, cooperation.notebook)
    cooperation.membership.routes = partial(lending_routes, lending)  # served on the member's socket once it joins
    return Parts(state=state, bus=bus, backends=backends, estimates=estimates, freeing=freeing, evictions=evictions,
                 limits=limits, cooperation=cooperation, adapters=adapters, admission=admission,
                 registration=Registration(state, bus, backends, evictions, adapters),
                 tasks=TaskSelection(state, bus),
                 persistence=Persistence(state, config_path),
                 status=StatusView(state, probe, estimates, backends),
                 planner=Planner(state, probe, estimates, backends, cooperation),
                 generations=generations, lending=lending, borrowing=borrowing, warmup=WarmUp(load, bus))


def shut_down(parts: Parts) -> None:
    """Close a manager's parts in order: refuse new work, stop the threads and streams, unload, leave the ledger."""
    state = parts.state
    with state.lock:
        state.closed = True
        state.touch(everyone=True)
    parts.limits.reaper.stop()
    parts.warmup.stop()
    parts.generations.stop_streams()
    parts.evictions.unload_all(state.deadline(5.0), quiet=True)
    parts.cooperation.stop()
    with state.lock:
        busy = [state.name_of(i) for i in state.instances.values()]
    if busy:
        parts.bus.emit("warning", message=f"still in use when the manager closed: {', '.join(busy)}")
