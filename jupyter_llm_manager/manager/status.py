"""Point-in-time reports of the state: status rows and device reports.

Rows are built under the lock from facts gathered before it (estimates,
device figures), hold ids and numbers only, and convert the monotonic
clock's last-use and expiry times to wall-clock times for display.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import NamedTuple

from ..backends import Backend
from ..backends.generation_defaults import GenerationDefaults
from ..config.spec import ModelSpec
from ..devices import DeviceProbe, device_budget
from ..errors import LLMManagerError
from ..estimates import EstimateCache, adapter_slice
from ..reports import DeviceReport, MachineModel, MemoryEstimate, ModelState, StatusRow
from ..reports.machine import borrower_names
from ..support.units import excerpt
from .adapters.specs import shares_base
from .instances import Instance
from .state import ManagerState

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


class _RowFacts(NamedTuple):
    backend: Backend
    problem: str | None
    estimate: MemoryEstimate | None
    estimate_error: str | None = None  # why a local model has no estimate (a damaged file): its row says it
    generation: GenerationDefaults | None = None  # what its files recommend, read before it loads


class StatusView(StateReader):
    """Builds :class:`StatusRow` and :class:`DeviceReport` snapshots."""

    def __init__(self, state: ManagerState, probe: DeviceProbe, estimates: EstimateCache,
                 backends: Callable[[str], Backend]) -> None:
        super().__init__(state, probe, estimates, backends)
        self._cache: dict[str, tuple[tuple[object, ...], StatusRow]] = {}  # id -> (what it depends on, its row)

    def rows(self) -> list[StatusRow]:
        """One row per registered model id.

        The row of an id whose model is idle in the registry (not loaded,
        waiting or held) is kept and handed out again until something it shows
        changes (the registry, the settings, its failure, its estimate, its
        last use): a dashboard refreshing 10,000 ids rebuilds only the rows of
        the models that moved.
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
            for spec in specs:
                if state.registry.specs.get(spec.id) is not spec:
                    continue  # replaced or removed meanwhile
                row = kept[spec.id]
                if row is None:  # (its facts were gathered above, unless it moved meanwhile: then the cached ones)
                    found = facts.get(spec.id) or _RowFacts(self._backends(spec.backend), None,
                                                             self._estimates.cached(spec))
                    row = self._row(spec, found, now, wall)
                    self._keep(spec, row, moving)
                rows.append(row)
            return rows

    def _moving(self) -> frozenset[str]:
        """The keys whose models move (loaded, loading, queued, held): their rows are built each time. Lock held."""
        state = self._state
        return frozenset(state.instances) | frozenset(state.queue.keys()) | frozenset(h.key for h in state.held)

    def _stamp(self, spec: ModelSpec, moving: frozenset[str]) -> tuple[object, ...] | None:
        """What an idle id's row depends on, or ``None`` when its model moves (its row is built each time).
        Caller holds the lock."""
        state = self._state
        key = state.registry.keys[spec.id]
        if key in moving:
            return None
        return (spec, state.registry_version, state.settings, state.failures.get(spec.id),
                state.last_used.get(key), self._estimates.cached(spec))

    def _kept(self, spec: ModelSpec, moving: frozenset[str]) -> StatusRow | None:
        """The kept row of an idle id whose stamp still holds. Compared field by field, making nothing: a new
        tuple per id would have the garbage collector walk the heap on every call of a large registry."""
        found = self._cache.get(spec.id)
        if found is None:
            return None
        state = self._state
        key = state.registry.keys[spec.id]
        stamp = found[0]
        if key in moving or stamp[0] is not spec or stamp[1] != state.registry_version:
            return None
        if _same(stamp[2], state.settings) and _same(stamp[3], state.failures.get(spec.id)) \
                and _same(stamp[4], state.last_used.get(key)) and _same(stamp[5], self._estimates.cached(spec)):
            return found[1]
        return None

    def _keep(self, spec: ModelSpec, row: StatusRow, moving: frozenset[str]) -> None:
        stamp = self._stamp(spec, moving)
        if stamp is None:
            self._cache.pop(spec.id, None)
        else:
            self._cache[spec.id] = (stamp, row)
            if len(self._cache) > 2 * len(self._state.registry.specs) + 64:  # ids removed long ago
                for gone in [i for i in self._cache if i not in self._state.registry.specs]:
                    del self._cache[gone]

    def row(self, model_id: str) -> StatusRow:
        """The row of one id (an alias gives its model's row)."""
        state = self._state
        with state.lock:
            spec = state.registry.specs[state.registry.resolve(model_id)]
        facts = self._facts(spec)
        with state.lock:
            return self._row(spec, facts, state.clock(), time.time())

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

    def _facts(self, spec: ModelSpec) -> _RowFacts:
        """What a row says that needs no lock: the backend, why it cannot load here, the estimate, the defaults."""
        backend = self._backends(spec.backend)
        return _RowFacts(backend, backend.problem(spec), *self._cheap_estimate(spec, backend),
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

    def _row(self, spec: ModelSpec, facts: _RowFacts, now: float, wall: float) -> StatusRow:
        """The row, from the state (the caller holds the lock) and facts gathered before."""
        state = self._state
        key = state.registry.keys[spec.id]
        instance = state.instances.get(key)
        backend = facts.backend
        estimate = _shown_estimate(spec, backend, facts.estimate, instance)
        position = state.queue.position(key)
        held = [h for h in state.held if h.key == key]
        row_state: ModelState
        if instance is not None:
            row_state = "unloading" if instance.state not in ("loading", "loaded") else instance.state
        elif position is not None:
            row_state = "waiting"
        elif held:
            row_state = "held"
        else:
            row_state = "failed" if spec.id in state.failures else "registered"
        placed = instance.placement.devices if instance is not None else tuple(
            dict.fromkeys(device for h in held for device in h.bytes))
        device = "remote" if backend.remote else ",".join(placed) or (
            ",".join(spec.device) if isinstance(spec.device, tuple) else spec.device)
        last_used = (instance.last_used if instance is not None else None) or state.last_used.get(key)
        expires = state.expires_at(instance) if instance is not None else None
        return StatusRow(
            id=spec.id, instance=key, aliases=state.registry.aliases_of(spec.id), backend=spec.backend,
            device=device, state=row_state, in_use=instance.in_use if instance else 0,
            pinned=spec.id in state.registry.pinned, priority=state.registry.priority(key),
            estimated_bytes=estimate.total_bytes if estimate is not None and estimate.known else None,
            actual_bytes=instance.footprint_bytes if instance is not None and row_state == "loaded" else None,
            last_used=None if last_used is None else wall - (now - last_used),
            expires_at=None if expires is None else wall + (expires - now),
            error=_bounded(state.failures.get(spec.id) or _last_call_error(instance) or facts.problem
                           or facts.estimate_error),
            remote=backend.remote,
            trust_remote_code=spec.trust_remote_code,
            keep_alive=state.keep_alive_of(instance) if instance is not None else spec.keep_alive,
            load_seconds=instance.load_seconds if instance is not None else None,
            details=dict(instance.loaded.details) if instance is not None and instance.loaded else {},
            protected=state.registry.is_protected(key), kind=spec.kind,
            waiting_for=state.queue.waiting_for(key) or ("queued" if position else None), queue_position=position,
            idle_seconds=None if last_used is None else now - last_used,
            expires_in=None if expires is None else expires - now,
            import_seconds=sum(s for _, s in instance.imported) if instance is not None and instance.imported else None,
            reachable=_reachable(instance), mode=spec.mode,
            context=instance.loaded.context_length if instance is not None and instance.loaded else None,
            progress=instance.progress or None if instance is not None and instance.state == "loading" else None,
            generation=_generation(spec, instance, facts.generation),
            counted_bytes=(instance.total_bytes if instance is not None and not instance.remote else None),
            held_bytes=sum(h.total_bytes for h in held) or None,
            held_by=tuple(dict.fromkeys(name for h in held for name in (h.holders or (h.held_by,)))),
            lent_to=borrower_names(instance.borrowers) if instance is not None else (),
            base=spec.base, adapter=spec.adapter,  # a LoRA adapter: shared on its base, or its own instance
            shares_base=None if spec.base is None else backend.adapters == "shared")


def _shown_estimate(spec: ModelSpec, backend: Backend, estimate: MemoryEstimate | None,
                    instance: Instance | None) -> MemoryEstimate | None:
    """The estimate a row shows: a loaded instance's own (at the context it chose), an adapter's slice."""
    if instance is not None and instance.estimate.known:
        return instance.estimate
    if estimate is not None and shares_base(spec, backend):
        return adapter_slice(estimate)
    return estimate


def _generation(spec: ModelSpec, instance: Instance | None, before_load: GenerationDefaults | None) -> dict[str, object]:
    """The settings a call without arguments gets: the loaded model's defaults, else those read from its files."""
    defaults = instance.loaded.generation if instance is not None and instance.loaded is not None else before_load
    return dict(spec.generation) if defaults is None else defaults.shown(spec.generation)


def _details(instance: Instance | None) -> dict[str, object]:
    return instance.loaded.details if instance is not None and instance.loaded is not None else {}


def _last_call_error(instance: Instance | None) -> str | None:
    """A loaded remote model whose last call failed: what failed, and when (until a call succeeds)."""
    details = _details(instance)
    error, when = details.get("last_error"), details.get("last_error_at")
    if not error:
        return None
    at = time.strftime("%H:%M:%S", time.localtime(when)) if isinstance(when, (int, float)) else "?"
    return f"last call failed at {at}: {error}"


def _reachable(instance: Instance | None) -> bool | None:
    reachable = _details(instance).get("reachable")
    return reachable if isinstance(reachable, bool) else None


def _bounded(text: str | None) -> str | None:
    return excerpt(text) if text else None

