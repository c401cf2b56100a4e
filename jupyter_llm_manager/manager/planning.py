"""Will these models fit together? The sizing a decision needs, and ``plan()``: admission's own decision, simulated.

:func:`gather` collects what deciding on a model needs (its backend, its
estimate, the device kinds its backend can use, how its context may grow),
with no lock held; admission and :class:`Planner` both use it. The planner
then takes the state as it is and simulates loading the models one after
another with the same pure decision admission executes
(:func:`~.policy.decision.simulate`): the same victims, the same context
growth, every limit. Models of the plan are not shielded from each other:
they fit together only when, at the end, all of them are loaded at once.
Nothing is loaded or evicted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..backends import Backend
from ..backends.base import ContextGrowth
from ..config.spec import ModelSpec
from ..devices import DeviceProbe
from ..errors import LLMManagerError
from ..estimates import EstimateCache
from ..reports import MemoryEstimate, PlanDevice, PlanModel, PlanReport
from ..support.units import format_bytes
from .adapters import adapter_ask
from .cooperation import Cooperation
from .policy.decision import Ask, Decision, Simulation, fit_hint, simulate
from .policy.fit import Holding
from .policy.reasons import Refused
from .state import ManagerState
from .status import StateReader

__all__ = ["ModelSizing", "Planner", "gather"]


@dataclass(frozen=True)
class ModelSizing:
    """What deciding on one model needs, gathered with no lock held."""

    spec: ModelSpec
    backend: Backend
    estimate: MemoryEstimate
    kinds: frozenset[str]
    growth: ContextGrowth | None = None

    def ask(self, state: ManagerState, thread: int | None) -> Ask:
        """The :class:`Ask` for this model in the state now. Caller holds the lock."""
        key = state.registry.keys[self.spec.id]
        growth = self.growth and self.growth.capped(self.spec.max_context_auto_limit or
                                                    state.settings.max_context_auto_limit)
        ask = Ask(self.spec.id, key, self.estimate, self.spec.device, self.kinds, state.registry.priority(key),
                  thread, self.backend.remote, state.settings.max_memory_per_model, growth)
        return adapter_ask(state, self.spec, self.backend, ask)  # a LoRA adapter: a slice of its base


def gather(spec: ModelSpec, backend: Backend, estimates: EstimateCache) -> ModelSizing:
    """The sizing of ``spec`` (reads files, maybe the network: never under a lock)."""
    growth = backend.context_growth(spec) if spec.max_context == "auto" else None
    return ModelSizing(spec, backend, estimates.get(spec, backend), frozenset(backend.device_kinds()), growth)








#: A model the planner cannot decide on: its row, said as is.
_Unplanned = PlanModel


class Planner(StateReader):
    """Plans with the manager's own state, estimates and policy, counting other kernels' models when it cooperates."""

    def __init__(self, state: ManagerState, probe: DeviceProbe, estimates: EstimateCache, backends: Callable[[str], Backend],
                 cooperation: Cooperation) -> None:
        super().__init__(state, probe, estimates, backends)
        self._cooperation = cooperation

    def wanted(self) -> list[str]:
        """What ``plan()`` checks by default: every task's selected option, else every ``preload`` model."""
        state = self._state
        with state.lock:
            registry = state.registry
            if registry.tasks:
                return [registry.resolve(task) for task in registry.tasks]
            return [spec.id for spec in registry.specs.values() if spec.preload]

    def plan(self, model_ids: Sequence[str]) -> PlanReport:
        """Load ``model_ids`` one after another on a copy of the state, as admission would; nothing changes."""
        if not model_ids:
            return PlanReport((), (), True, "Nothing to check: name the models to check, or select task options "
                                            "or mark models preload: true.")
        state = self._state
        with state.lock:
            names = list(dict.fromkeys(state.registry.resolve(i) for i in model_ids))
            specs = [state.registry.specs[name] for name in names]
            bases = {spec.base: state.registry.specs.get(spec.base) for spec in specs if spec.base}
        specs = list({s.id: s for spec in specs for s in (self._shared_base(spec, bases), spec) if s}.values())
        found = [self._sizing(spec) for spec in specs]
        others = self._cooperation.others()
        memories = self._probe()
        with state.lock:
            # the snapshot admission would decide on for a request of this thread, not queued yet
            snapshot = state.snapshot(memories, elsewhere=others.seen_by(None))
            me = threading.get_ident()
            asks = [item.ask(state, me) if isinstance(item, ModelSizing) else item for item in found]
        simulation = simulate(snapshot, [a for a in asks if isinstance(a, Ask)])
        return _report(asks, simulation)

    def _shared_base(self, spec: ModelSpec, bases: dict[str, ModelSpec | None]) -> ModelSpec | None:
        """A LoRA adapter's base, planned before it when the adapter lives on it (it loads with it)."""
        shared = spec.base is not None and self._backends(spec.backend).adapters == "shared"
        return bases.get(spec.base or "") if shared else None

    def _sizing(self, spec: ModelSpec) -> ModelSizing | _Unplanned:
        """The sizing of one model, or the row saying why it cannot be planned."""
        backend = self._backends(spec.backend)
        cannot = backend.problem(spec)
        if cannot:  # a missing package or provider: no size would make it fit
            return PlanModel(spec.id, str(spec.device), 0, "unknown", "unavailable", cannot)
        try:
            sizing = gather(spec, backend, self._estimates)
        except LLMManagerError as error:
            return PlanModel(spec.id, str(spec.device), 0, str(error), "unknown",
                             "no estimate: give required_memory to plan it")
        if not sizing.estimate.known and not backend.remote:
            return PlanModel(spec.id, str(spec.device), 0, sizing.estimate.weights_method, "unknown",
                             "no estimate: give required_memory to plan it")
        return sizing


def _report(asks: list[Ask | PlanModel], simulation: Simulation) -> PlanReport:
    outcomes = iter(simulation.outcomes)
    evicted = {(e.owner, e.key): e for e in simulation.evictions}
    models = tuple(item if isinstance(item, PlanModel) else _model(item, next(outcomes), evicted, simulation)
                   for item in asks)
    devices = _devices(simulation, models)
    blocked = [m for m in models if m.state not in ("loaded", "admitted")]
    if not blocked:
        names = ", ".join(simulation.evicted_names())
        verdict = f"Fits after evicting {names}." if names else "Fits, without evicting anything."
        return PlanReport(models, devices, True, verdict)
    reasons = "; ".join(f"{m.id}: {m.note or m.state}" for m in blocked)
    if all(m.state == "unknown" for m in blocked):
        return PlanReport(models, devices, False, f"Cannot tell whether they fit. {reasons}.",
                          "An estimate needs the model's metadata (a local folder, the Hub cache, or the Hub "
                          "online), or a declared size: required_memory (vram_gb in a task option).")
    if all(m.state == "unavailable" for m in blocked):  # memory is not the problem: say what is
        return PlanReport(models, devices, False, f"Cannot load here. {reasons}.")
    refusals = [d.plan.why for d in simulation.outcomes if isinstance(d, Decision) and isinstance(d.plan.why, Refused)]
    remedies = [why.cause.remedy for why in refusals if why.cause.remedy]
    advice = remedies[0] if remedies else \
        fit_hint(d.device for d in devices) if any(m.state in ("refused", "evicted") for m in blocked) else ""
    short = _short(simulation, devices, blocked)
    verdict = "Does not fit together" + (f" ({', '.join(short)})" if short else "") + f". {reasons}."
    return PlanReport(models, devices, False, verdict, advice)


def _short(simulation: Simulation, devices: Sequence[PlanDevice], blocked: Sequence[PlanModel]) -> list[str]:
    """``cuda:0 short by 2.0 GB`` per device: what a refusal could not make free, else what the blocked models
    would add beyond the budget."""
    gaps: dict[str, int] = {}
    for decision in simulation.outcomes:
        if isinstance(decision, Decision):
            for shortfall in decision.plan.shortfalls:
                gap = shortfall.needed_bytes - shortfall.available_bytes
                gaps[shortfall.device] = max(gaps.get(shortfall.device, 0), gap)
    if not gaps:
        gaps = {d.device: d.after_bytes + d.claimed_bytes + _missing(blocked, d.device) - d.budget_bytes
                for d in devices if _missing(blocked, d.device)}
    return [f"{device} short by {format_bytes(gap)}" for device, gap in gaps.items() if gap > 0]


def _model(ask: Ask, outcome: Decision | Holding, evicted: dict, simulation: Simulation) -> PlanModel:
    """The row of one planned model: how it ends, and why when it does not stay loaded."""
    if isinstance(outcome, Holding):
        state, device, size, how, note = "loaded", _where(outcome), outcome.total_bytes, "measured", ""
    else:
        estimate = outcome.estimate or ask.estimate
        declared = estimate.overhead_method.startswith("total set")  # required_memory / vram_gb
        how = estimate.overhead_method if declared else f"estimated: {estimate.weights_method}"
        device = "remote" if ask.remote else ",".join(outcome.placement.devices) or str(ask.wanted)
        state = {"admit": "admitted", "wait": "waits", "refuse": "refused"}[outcome.plan.verdict]
        size, note = estimate.total_bytes, _why_not(outcome)
        if ask.growth is not None and outcome.plan.admitted:
            note = f"context {outcome.placement.context:,} tokens (max_context: auto: the largest that fits)"
        elif ask.growth is not None:
            note = "; ".join(p for p in (f"planned at its {ask.growth.floor}-token floor (max_context: auto)",
                                         note) if p)
    eviction = evicted.get((None, ask.key))
    if eviction is not None and state in ("loaded", "admitted") and not _held_at_end(ask.key, simulation):
        later = simulation.evicted_by(ask.key)
        state, note = "evicted", f"a later model of the plan evicts it ({later}: {_limit(eviction.reason, simulation)})"
    return PlanModel(ask.name, device, size, how, state, note)


def _held_at_end(key: str, simulation: Simulation) -> bool:
    return any(h.ident == (None, key) for h in simulation.after.holdings)


def _limit(reason: str, simulation: Simulation) -> str:
    if reason == "lru":
        return f"max_loaded_models={simulation.before.max_loaded} is reached"
    return "over the memory budget" if reason == "budget" else reason


def _why_not(decision: Decision) -> str:
    """Why a planned model is not admitted."""
    plan = decision.plan
    if plan.admitted:
        return ""
    if plan.shortfalls:
        brief = plan.why.cause.brief if isinstance(plan.why, Refused) else ""
        return "; ".join(f"needs {format_bytes(s.needed_bytes)} on {s.device}, only {format_bytes(s.available_bytes)} "
                         "can be made free" for s in plan.shortfalls) + (f": {brief}" if brief else "")
    return plan.why.short() if plan.why is not None else plan.verdict


def _where(holding: Holding) -> str:
    return ",".join(holding.bytes) or "remote"


def _devices(simulation: Simulation, models: tuple[PlanModel, ...]) -> tuple[PlanDevice, ...]:
    before, after = simulation.before, simulation.after
    devices = []
    for device, room in before.devices.items():
        added = sum(m.estimated_bytes for m in models
                    if m.state in ("admitted", "evicted") and device in m.device.split(",")
                    and not any(h.name == m.id for h in before.holdings))
        gone = tuple((e.name, e.reason, e.bytes) for e in simulation.evictions
                     if any(h.ident == (e.owner, e.key) and h.bytes.get(device)
                            for h in (*before.holdings, *after.holdings))
                     or any(m.id == e.name and device in m.device.split(",") for m in models))
        if added or gone or before.held(device):
            claimed = sum(h.bytes.get(device, 0) for h in before.holdings if h.claim)
            devices.append(PlanDevice(device, room.budget, before.held(device) - claimed, added, gone,
                                      after.held(device) - claimed, claimed))
    return tuple(devices)


def _missing(blocked: Sequence[PlanModel], device: str) -> int:
    return sum(m.estimated_bytes for m in blocked if m.state != "evicted" and device in m.device.split(","))

