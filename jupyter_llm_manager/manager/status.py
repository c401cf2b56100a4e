"""Point-in-time reports of the state: status rows and device reports.

Rows are built under the lock (:mod:`.status_rows`) from facts gathered
before it (estimates, files, device figures); the rows of idle ids are kept
between calls until what they show changes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from ..backends import Backend
from ..backends.generation_defaults import GenerationDefaults
from ..config.spec import ModelSpec
from ..devices import DeviceProbe, device_budget
from ..errors import LLMManagerError
from ..estimates import EstimateCache
from ..reports import DeviceReport, MachineModel, MemoryEstimate, StatusRow
from ..reports.machine import borrower_names
from ..support.units import excerpt
from .state import ManagerState
from .status_rows import RowFacts, idle_row, status_row

__all__ = ["StateReader", "StatusView"]

log = logging.getLogger(__name__)


class StateReader:
    """A part that reads the state with what it needs to judge it: devices, estimates, backends."""

    def __init__(self, state: ManagerState, probe: DeviceProbe, estimates: EstimateCache,
                 backends: Callable[[str], Backend]) -> None:
        self._state = state
        self._probe = probe
        self._estimates = estimates
        self._backends = backends


def _same(kept: object, now: object) -> bool:
    return kept is now or kept == now


class StatusView(StateReader):
    """Builds :class:`StatusRow` and :class:`DeviceReport` snapshots."""

    def __init__(self, state: ManagerState, probe: DeviceProbe, estimates: EstimateCache,
                 backends: Callable[[str], Backend]) -> None:
        super().__init__(state, probe, estimates, backends)
        # id -> (spec, registry change, settings, failure, last use, estimate: what its row depends on; the row)
        self._cache: dict[str, tuple[Any, ...]] = {}

    def rows(self) -> list[StatusRow]:
        """One row per registered model id.

        The row of an id whose model is idle in the registry (not loaded,
        waiting or held) is kept and handed out again until something it shows
        changes (what the registry says of it, the settings, its failure, its
        estimate, its last use): a dashboard refreshing 10,000 ids rebuilds
        only the rows of the models that moved, and registering, aliasing or
        pinning one id rebuilds the rows of that id (and of the ids sharing its
        instance) only. A settings change rebuilds every row.
        """
        state = self._state
        with state.lock:
            specs = list(state.registry.specs.values())
            version, moving = state.version, self._moving()
            kept = {spec.id: self._kept(spec, moving) for spec in specs}
        stale = [spec for spec in specs if kept[spec.id] is None]
        facts = {spec.id: self._facts(spec) for spec in stale}  # files and imports: never under the lock
        with state.lock:
            now, wall = state.clock(), time.time()
            if state.version != version:  # something moved meanwhile: every kept row is checked again
                moving = self._moving()
                kept = {spec.id: self._kept(spec, moving) for spec in specs}
            rows = []
            registry = state.registry
            for spec in specs:
                if registry.specs.get(spec.id) is not spec:
                    continue  # replaced or removed meanwhile
                row = kept[spec.id]
                if row is None:  # (its facts were gathered above, unless it moved meanwhile: then the cached ones)
                    found = facts.get(spec.id) or RowFacts(self._backends(spec.backend), None,
                                                           self._estimates.cached(spec))
                    key = registry.keys[spec.id]
                    if key in moving:  # built each time
                        row = status_row(state, spec, found, now, wall)
                        self._cache.pop(spec.id, None)
                    else:  # kept while what it depends on stays (see _kept)
                        row = idle_row(state, spec, key, found, now, wall)
                        self._cache[spec.id] = (spec, registry.change_of(spec.id), state.settings,
                                                state.failures.get(spec.id), state.last_used.get(key),
                                                found.estimate, row)
                rows.append(row)
            if len(self._cache) > 2 * len(specs) + 64:  # ids removed long ago
                for gone in [i for i in self._cache if i not in registry.specs]:
                    del self._cache[gone]
            return rows

    def _moving(self) -> frozenset[str]:
        """The keys whose models move (loaded, loading, queued, held): their rows are built each time. Lock held."""
        state = self._state
        return frozenset(state.instances) | frozenset(state.queue.keys()) | frozenset(h.key for h in state.held)

    def _kept(self, spec: ModelSpec, moving: frozenset[str]) -> StatusRow | None:
        """The kept row of an idle id whose stamp still holds. Compared field by field, making nothing: a new
        tuple per id would have the garbage collector walk the heap on every call of a large registry."""
        kept = self._cache.get(spec.id)
        if kept is None:
            return None
        state = self._state
        key = state.registry.keys[spec.id]
        if key in moving or kept[0] is not spec or kept[1] != state.registry.change_of(spec.id):
            return None
        if _same(kept[2], state.settings) and _same(kept[3], state.failures.get(spec.id)) \
                and _same(kept[4], state.last_used.get(key)) and _same(kept[5], self._estimates.cached(spec)):
            row: StatusRow = kept[6]
            return row
        return None

    def row(self, model_id: str) -> StatusRow:
        """The row of one id (an alias gives its model's row)."""
        state = self._state
        with state.lock:
            spec = state.registry.specs[state.registry.resolve(model_id)]
        facts = self._facts(spec)
        with state.lock:
            return status_row(state, spec, facts, state.clock(), time.time())

    def machine_models(self, pid: int, notebook: str) -> list[MachineModel]:
        """This manager's instances as rows of the machine report, one per device."""
        state = self._state
        with state.lock:
            now, wall = state.clock(), time.time()
            return [MachineModel(pid, notebook, state.name_of(i), device, size, i.state,
                                 state.registry.is_pinned(i.key), i.in_use, wall - (now - i.last_used), True,
                                 borrowers=borrower_names(i.borrowers))
                    for i in state.instances.values() if not i.remote for device, size in i.bytes.items()] + [
                MachineModel(pid, notebook, h.model_id, device, size, "held", False, 0, wall, True)
                for h in state.held for device, size in h.bytes.items()]

    def summary(self) -> str:
        """``3 registered, 1 loaded, cap=2, keep_alive=None``: what a manager's repr says."""
        state = self._state
        with state.lock:
            loaded = sum(1 for i in state.instances.values() if i.state == "loaded")
            return (f"{len(state.registry.specs)} registered, {loaded} loaded, "
                    f"cap={state.settings.max_loaded_models}, keep_alive={state.settings.keep_alive}")

    def devices(self) -> list[DeviceReport]:
        """Per device: total, free, this manager's budget, and the bytes its models hold."""
        memories = self._probe()
        state = self._state
        with state.lock:
            settings = state.settings
            reports = []
            for memory in memories:
                holders = [i for i in state.instances.values() if i.bytes.get(memory.device)]
                lingering = [h for h in state.held if h.bytes.get(memory.device)]
                held = sum(i.bytes[memory.device] for i in holders) + sum(h.bytes[memory.device] for h in lingering)
                budget = device_budget(memory, fraction=settings.memory_fraction, absolute=settings.memory_budget,
                                       held_bytes=held)
                names = tuple(state.name_of(i) for i in holders) + tuple(f"{h.model_id} (held)" for h in lingering)
                reports.append(DeviceReport(memory.device, memory.name, memory.total_bytes, memory.free_bytes,
                                            budget, held, names, memory.source))
            return reports

    def _facts(self, spec: ModelSpec) -> RowFacts:
        """What a row says that needs no lock: the backend, why it cannot load here, the estimate, the defaults."""
        backend = self._backends(spec.backend)
        return RowFacts(backend, backend.problem(spec), *self._cheap_estimate(spec, backend),
                         generation=self._generation_defaults(spec, backend))

    def _generation_defaults(self, spec: ModelSpec, backend: Backend) -> GenerationDefaults | None:
        """What the backend adds to a call, from local files only; ``None`` when they cannot be read (the row
        of a damaged file says why through its estimate)."""
        try:
            return backend.generation_defaults(spec)
        except LLMManagerError as error:
            log.debug("no generation defaults for %r: %s", spec.id, error)
        except Exception as error:  # a third-party backend's bug stays in its own row
            log.debug("the generation defaults of %r failed", spec.id, exc_info=error)
        return None

    def _cheap_estimate(self, spec: ModelSpec, backend: Backend) -> tuple[MemoryEstimate | None, str | None]:
        """A cached estimate, or a fresh one when it needs no network (local files); else why there is none.

        One model's bad file (or a backend's bug) shows in that model's row:
        it never fails the rows of the others. Local files are read with
        bounded work (a GGUF header is refused at once when it is not one).
        """
        cached = self._estimates.cached(spec)
        if cached is not None or not spec.local_path:
            return cached, None
        try:
            return self._estimates.get(spec, backend), None
        except LLMManagerError as error:
            log.debug("no estimate for %r: %s", spec.id, error)
            return None, excerpt(f"no estimate: {error}")
        except Exception as error:  # a third-party backend's bug stays in its own row
            log.debug("the estimate of %r failed", spec.id, exc_info=error)
            return None, excerpt(f"no estimate: {type(error).__name__}: {error}")

