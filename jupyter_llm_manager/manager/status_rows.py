"""One status row: built under the lock from the state and from facts gathered before it.

A row holds ids and numbers only, and converts the monotonic clock's
last-use and expiry times to wall-clock times for display. The row of an id
whose model is idle (not loaded, loading, queued or held) is built by
:func:`idle_row`, which does only what such a row shows: the first status of
10,000 never-loaded ids builds it 10,000 times.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ..backends import Backend
from ..backends.generation_defaults import GenerationDefaults
from ..config.spec import ModelSpec
from ..estimates import adapter_slice
from ..reports import MemoryEstimate, ModelState, StatusRow
from ..reports.machine import borrower_names
from ..support.units import excerpt
from .adapters.specs import shares_base
from .instances import Instance
from .state import ManagerState

__all__ = ["RowFacts", "idle_row", "status_row"]


class RowFacts(NamedTuple):
    """What a row says that is read without the lock: files, imports, estimates."""

    backend: Backend
    problem: str | None
    estimate: MemoryEstimate | None
    estimate_error: str | None = None  # why a local model has no estimate (a damaged file): its row says it
    generation: GenerationDefaults | None = None  # what its files recommend, read before it loads


def idle_row(state: ManagerState, spec: ModelSpec, key: str, facts: RowFacts, now: float, wall: float) -> StatusRow:
    """The row of an id whose instance ``key`` is not loaded, loading, queued or held (lock held): the fields
    of an instance keep their defaults."""
    registry = state.registry
    backend = facts.backend
    estimate = _shown_estimate(spec, backend, facts.estimate, None)
    last_used = state.last_used.get(key)
    failure = state.failures.get(spec.id)
    return StatusRow.of(
        id=spec.id, instance=key, aliases=registry.aliases_of(spec.id), backend=spec.backend,
        device="remote" if backend.remote else (",".join(spec.device) if isinstance(spec.device, tuple)
                                                else spec.device),
        state="failed" if failure is not None else "registered", in_use=0,
        pinned=spec.id in registry.pinned, priority=registry.priority(key),
        estimated_bytes=estimate.total_bytes if estimate is not None and estimate.known else None,
        actual_bytes=None, last_used=None if last_used is None else wall - (now - last_used), expires_at=None,
        error=_bounded(failure or facts.problem or facts.estimate_error), remote=backend.remote,
        trust_remote_code=spec.trust_remote_code, keep_alive=spec.keep_alive,
        protected=registry.is_protected(key), kind=spec.kind, mode=spec.mode,
        idle_seconds=None if last_used is None else now - last_used,
        generation=_generation(spec, None, facts.generation), base=spec.base, adapter=spec.adapter,
        shares_base=None if spec.base is None else backend.adapters == "shared")


def status_row(state: ManagerState, spec: ModelSpec, facts: RowFacts, now: float, wall: float) -> StatusRow:
    """The row of any id (lock held): an idle one's is :func:`idle_row`'s."""
    key = state.registry.keys[spec.id]
    instance = state.instances.get(key)
    position = state.queue.position(key)
    held = [h for h in state.held if h.key == key]
    if instance is None and position is None and not held:
        return idle_row(state, spec, key, facts, now, wall)
    backend = facts.backend
    estimate = _shown_estimate(spec, backend, facts.estimate, instance)
    row_state: ModelState
    if instance is not None:
        row_state = "unloading" if instance.state not in ("loading", "loaded") else instance.state
    else:
        row_state = "waiting" if position is not None else "held"
    placed = instance.placement.devices if instance is not None else tuple(
        dict.fromkeys(device for h in held for device in h.bytes))
    device = "remote" if backend.remote else ",".join(placed) or (
        ",".join(spec.device) if isinstance(spec.device, tuple) else spec.device)
    last_used = (instance.last_used if instance is not None else None) or state.last_used.get(key)
    expires = state.expires_at(instance) if instance is not None else None
    return StatusRow.of(
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
