"""Will these models fit together? The dry run of admission.

:meth:`Planner.plan` loads nothing: it takes the books as they are, then
admits each model in turn with the same policy code admission uses
(:func:`policy.admit`, :func:`policy.apply`, :func:`placement.place`), keeping
the models already planned in place (they must fit *together*). The report
says, per model, its estimate and how it was obtained; per device, the budget,
what is held, what would be evicted and why; and the verdict, with what to
change when they do not fit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from ..config.spec import ModelSpec
from ..errors import LLMManagerError
from ..estimates import MemoryEstimate
from ..support.units import bytes_text, format_bytes
from .loading import FIT_HINT
from .policy import fit as policy
from .policy.placement import place
from .status import BooksReader

__all__ = ["PlanDevice", "PlanModel", "PlanReport", "Planner"]


@dataclass(frozen=True)
class PlanModel:
    """One model of a plan: where it would go, its estimate, and how that was obtained."""

    id: str
    device: str
    estimated_bytes: int
    how: str
    state: str  # "loaded" (it stays), "admitted", "waits", "refused", "unknown", "unavailable" (cannot load here)
    note: str = ""

    estimated_str = bytes_text("estimated_bytes")


@dataclass(frozen=True)
class PlanDevice:
    """One device of a plan: its budget, what is held now, what the plan adds and evicts."""

    device: str
    budget_bytes: int
    held_bytes: int
    added_bytes: int
    evictions: tuple[tuple[str, str, int], ...]  # (model id, reason, bytes)
    after_bytes: int

    budget_str = bytes_text("budget_bytes")
    held_str = bytes_text("held_bytes")
    added_str = bytes_text("added_bytes")
    after_str = bytes_text("after_bytes")


@dataclass(frozen=True)
class PlanReport:
    """The answer to "will these fit together?", computed without loading anything."""

    models: tuple[PlanModel, ...]
    devices: tuple[PlanDevice, ...]
    fits: bool
    verdict: str
    advice: str = ""

    @property
    def evictions(self) -> tuple[str, ...]:
        return tuple(model_id for device in self.devices for model_id, _, _ in device.evictions)

    def __str__(self) -> str:
        lines = [self.verdict]
        lines += [f"  {m.id}: {m.estimated_str} on {m.device} ({m.state}; {m.how})" + (f" — {m.note}" if m.note else "")
                  for m in self.models]
        lines += [f"  {d.device}: budget {d.budget_str}, held {d.held_str}, adds {d.added_str}"
                  + (f", evicts {', '.join(f'{i} ({r})' for i, r, _ in d.evictions)}" if d.evictions else "")
                  for d in self.devices]
        return "\n".join(lines + ([self.advice] if self.advice else []))


class Planner(BooksReader):
    """Plans with the manager's own books, estimates and policy."""

    def wanted(self) -> list[str]:
        """What ``plan()`` checks by default: every task's selected option, else every ``preload`` model."""
        books = self._books
        with books.lock:
            registry = books.registry
            if registry.tasks:
                return [registry.resolve(task) for task in registry.tasks]
            return [spec.id for spec in registry.specs.values() if spec.preload]

    def plan(self, model_ids: Sequence[str]) -> PlanReport:
        """Admit ``model_ids`` one after another on a copy of the books; nothing is loaded or evicted."""
        if not model_ids:
            return PlanReport((), (), True, "Nothing to check: give model ids (plan(['a', 'b'])), or select task "
                                            "options or mark models preload: true.")
        books = self._books
        with books.lock:
            names = list(dict.fromkeys(books.registry.resolve(i) for i in model_ids))
            specs = [books.registry.specs[name] for name in names]
        facts = [(spec, self._backends(spec.backend), *self._estimate(spec)) for spec in specs]
        kinds = {spec.id: backend.device_kinds() for spec, backend, _, _ in facts}
        memories = self._probe()
        with books.lock:
            now = books.snapshot(memories)
            keys = {books.registry.keys[spec.id] for spec in specs}
            loaded = {h.key for h in now.holdings}
            snapshot = _kept(now, keys)  # the planned models already loaded stay: they must fit together
            models, plans = [], []
            for spec, backend, estimate, problem in facts:
                key = books.registry.keys[spec.id]
                request = policy.Request(spec.id, key, {}, books.registry.priority(key), None, backend.remote)
                if key in loaded:
                    models.append(PlanModel(spec.id, _where(now, key), _held(now, key), "measured", "loaded"))
                    continue
                cannot = backend.problem(spec)
                if cannot:  # a missing package or provider: no size would make it fit
                    models.append(PlanModel(spec.id, str(spec.device), 0, "unknown", "unavailable",
                                            cannot))
                    continue
                if estimate is None or (not estimate.known and not backend.remote):
                    how = problem or (estimate.weights_method if estimate else "unknown")
                    models.append(PlanModel(spec.id, str(spec.device), 0, how, "unknown",
                                            "no estimate: give required_memory to plan it"))
                    continue
                model, snapshot, plan = _admit(spec, estimate, kinds[spec.id], snapshot, request)
                models.append(model)
                plans.append(plan)
        return _report(tuple(models), now, snapshot, plans)

    def _estimate(self, spec: ModelSpec) -> tuple[MemoryEstimate | None, str]:
        try:
            return self._estimates.get(spec, self._backends(spec.backend)), ""
        except LLMManagerError as error:
            return None, str(error)


def _kept(snapshot: policy.Snapshot, keys: set[str]) -> policy.Snapshot:
    """The snapshot with these instances pinned: a plan never evicts one of its own models."""
    return replace(snapshot, holdings=tuple(replace(h, pinned=True) if h.key in keys else h
                                            for h in snapshot.holdings))


def _where(snapshot: policy.Snapshot, key: str) -> str:
    return ",".join(d for h in snapshot.holdings if h.key == key for d in h.bytes) or "remote"


def _held(snapshot: policy.Snapshot, key: str) -> int:
    return sum(h.total_bytes for h in snapshot.holdings if h.key == key)


def _admit(spec: ModelSpec, estimate: MemoryEstimate, kinds: set[str], snapshot: policy.Snapshot,
           request: policy.Request) -> tuple[PlanModel, policy.Snapshot, policy.Plan]:
    """One model through placement and the policy, as admission does; the snapshot after it."""
    note = "planned at its 512-token floor (max_context: auto grows into the room left)" \
        if spec.max_context == "auto" else ""
    if request.remote:
        return (PlanModel(spec.id, "remote", 0, "a server's model: no local memory", "admitted", note),
                snapshot, policy.Plan("admit"))
    placement = place(spec.device, kinds, snapshot, request)
    share = estimate.total_bytes // max(len(placement.devices), 1)
    request = replace(request, needed={device: share for device in placement.devices})
    plan = policy.admit(snapshot, request)
    declared = estimate.overhead_method.startswith("total set")  # required_memory / vram_gb
    how = estimate.overhead_method if declared else f"estimated: {estimate.weights_method}"
    state = {"admit": "admitted", "wait": "waits", "refuse": "refused"}[plan.verdict]
    model = PlanModel(spec.id, ",".join(placement.devices), estimate.total_bytes, how, state,
                      "; ".join(part for part in (note, _why_not(plan)) if part))
    if not plan.admitted:
        return model, snapshot, plan
    after = policy.apply(snapshot, plan, request)
    return model, _kept(after, {request.key}), plan


def _why_not(plan: policy.Plan) -> str:
    """Why a planned model cannot be admitted beside the others (which the plan holds in place)."""
    if plan.admitted:
        return ""
    if plan.shortfalls:
        return "; ".join(f"needs {format_bytes(s.needed_bytes)} on {s.device}, only {format_bytes(s.available_bytes)} "
                         "can be made free beside the other models of the plan" for s in plan.shortfalls)
    if plan.verdict == "wait":
        return plan.reason.replace("waiting for capacity: ", "would wait for ")
    return plan.reason.split(";")[0].replace("Cannot load", "cannot load") + " beside the other models of the plan"


def _report(models: tuple[PlanModel, ...], before: policy.Snapshot, after: policy.Snapshot,
            plans: list[policy.Plan]) -> PlanReport:
    evictions = [e for plan in plans if plan.admitted for e in plan.evictions]
    devices = []
    for device, room in before.devices.items():
        added = sum(m.estimated_bytes for m in models if m.state == "admitted" and device in m.device.split(","))
        gone = tuple((e.name, e.reason, e.bytes) for e in evictions
                     if any(h.key == e.key and h.bytes.get(device) for h in before.holdings))
        if added or gone or before.held(device):
            devices.append(PlanDevice(device, room.budget, before.held(device), added, gone, after.held(device)))
    blocked = [m for m in models if m.state in ("waits", "refused", "unknown", "unavailable")]
    if not blocked:
        names = ", ".join(dict.fromkeys(e.name for e in evictions))
        verdict = f"Fits after evicting {names}." if evictions else "Fits, without evicting anything."
        return PlanReport(models, tuple(devices), True, verdict)
    reasons = "; ".join(f"{m.id}: {m.note or m.state}" for m in blocked)
    if all(m.state == "unknown" for m in blocked):
        return PlanReport(models, tuple(devices), False, f"Cannot tell whether they fit. {reasons}.",
                          "An estimate needs the model's metadata (a local folder, the Hub cache, or the Hub "
                          "online), or a declared size: required_memory (vram_gb in a task option).")
    if all(m.state == "unavailable" for m in blocked):  # memory is not the problem: say what is
        return PlanReport(models, tuple(devices), False, f"Cannot load here. {reasons}.")
    advice = FIT_HINT if any(m.state == "refused" for m in blocked) else ""
    short = [f"{d.device} short by {format_bytes(d.after_bytes + _missing(blocked, d.device) - d.budget_bytes)}"
             for d in devices if _missing(blocked, d.device) and
             d.after_bytes + _missing(blocked, d.device) > d.budget_bytes]
    verdict = "Does not fit together" + (f" ({', '.join(short)})" if short else "") + f". {reasons}."
    return PlanReport(models, tuple(devices), False, verdict, advice)


def _missing(blocked: Sequence[PlanModel], device: str) -> int:
    return sum(m.estimated_bytes for m in blocked if device in m.device.split(","))
