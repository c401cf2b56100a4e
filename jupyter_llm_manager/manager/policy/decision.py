"""One fit decision: everything admission decides for a request, and the same decision simulated for several.

:func:`decide` takes a snapshot and an :class:`Ask` (a model not loaded, with
its estimate and what limits it) and returns a :class:`Decision`: refused at
once by ``max_memory_per_model``, by a device that cannot be used, or by the
policy; told to wait; or admitted, with its devices, the victims to evict, and
for ``max_context: auto`` the context it grows to. Admission executes exactly
such decisions; :func:`simulate` chains them, in order, on one snapshot, as
loading the models one after another without waiting would, and that is what
``plan()`` reports. The dry run and the action cannot disagree: they are the
same code (like huggingface_hub's ``DeleteCacheStrategy``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from ...backends.base import ContextGrowth, Placement
from ...errors import ResourceNotAvailableError
from ...reports import MemoryEstimate
from .fit import Eviction, Holding, Plan, Request, Snapshot, admit, apply, enforce
from .placement import place
from .reasons import Leaving, NotPlaceable, OverModelCap, QueuedBehind

__all__ = ["Ask", "Decision", "Outcome", "Simulation", "decide", "fit_hint", "simulate"]



def fit_hint(devices: Iterable[str] = ()) -> str:
    """What to change when models do not fit on ``devices``.

    4-bit quantization (bitsandbytes) and moving the model to the CPU are
    named only where a GPU is involved; on the CPU, a smaller dtype or a
    quantized GGUF file run by llama.cpp is what helps.
    """
    if any(device != "cpu" for device in devices):
        return ("Unpin or unload a model, raise memory_fraction or memory_budget, choose a smaller dtype or "
                "quantization='4bit', or place the model on another device (device='cpu').")
    return ("Unpin or unload a model, raise memory_fraction or memory_budget, or choose a smaller dtype "
            "(dtype='bfloat16') or a quantized GGUF file (backend='llama_cpp').")


@dataclass(frozen=True)
class Ask:
    """A model asked for, with the facts its decision needs (gathered with no lock held)."""

    name: str
    key: str
    estimate: MemoryEstimate
    wanted: str | tuple[str, ...] = "auto"  # the spec's device
    kinds: frozenset[str] = frozenset({"cpu"})  # device kinds its backend can use here
    priority: int = 0
    thread: int | None = None
    remote: bool = False
    cap: int | None = None  # max_memory_per_model
    growth: ContextGrowth | None = None  # max_context: auto
    base: str | None = None  # a LoRA adapter on a loaded base: that base's instance key


@dataclass(frozen=True)
class Decision:
    """What admission does for one :class:`Ask`; ``plan.verdict`` is admit, wait or refuse."""

    ask: Ask
    plan: Plan
    placement: Placement = field(default_factory=lambda: Placement(()))
    estimate: MemoryEstimate | None = None  # at the chosen context (max_context: auto), else the ask's
    hint: str | None = None

    @property
    def request(self) -> Request:
        """The request as the policy placed it: its bytes per device."""
        return _request(self.ask, self.placement, self.estimate or self.ask.estimate)

    def error(self) -> ResourceNotAvailableError:
        """The refusal as the exception admission raises."""
        return ResourceNotAvailableError(self.plan.reason, model_id=self.ask.name, shortfalls=self.plan.shortfalls,
                                         hint=self.hint)


def decide(snapshot: Snapshot, ask: Ask) -> Decision:
    """Admit, wait or refuse ``ask`` on ``snapshot``: every limit is checked here, once.

    First come, first served across kernels: while requests of other kernels
    are ahead in the machine-wide queue (``snapshot.ahead``), a request that
    needs evictions, or would wait, waits behind them; a refusal (waiting
    cannot help) stays a refusal.
    """
    if ask.remote:
        return Decision(ask, Plan("admit"), Placement(()), ask.estimate)
    total = ask.estimate.total_bytes
    if ask.cap is not None and total > ask.cap:
        return Decision(ask, Plan("refuse", why=OverModelCap(ask.name, total, ask.cap)),
                        hint="Raise max_memory_per_model (or set it to auto), or choose a smaller model, dtype or "
                             "quantization.")
    try:
        placement = _capped(place(ask.wanted, ask.kinds, snapshot, _request(ask, Placement(()), ask.estimate)),
                            ask.cap)
    except ResourceNotAvailableError as error:
        return Decision(ask, Plan("refuse", why=NotPlaceable(error.message)), hint=error.hint)
    plan = admit(snapshot, _request(ask, placement, ask.estimate))
    if snapshot.ahead and plan.verdict != "refuse" and not (plan.admitted and not plan.evictions):
        return Decision(ask, Plan("wait", blockers=plan.blockers, why=QueuedBehind(snapshot.ahead)), placement,
                        ask.estimate)
    if not plan.admitted:
        return Decision(ask, plan, placement, ask.estimate, hint=_refusal_hint(ask, plan))
    if ask.growth is None:
        return Decision(ask, plan, placement, ask.estimate)
    return _grown(snapshot, ask, plan, placement)


def _grown(snapshot: Snapshot, ask: Ask, plan: Plan, placement: Placement) -> Decision:
    """``max_context: auto``: admitted at its floor, the context grows into the room the budget leaves.

    The room is what stays free once the plan's evictions are done and the
    model is in at its floor: no model is evicted to make the context larger.
    """
    growth = ask.growth
    assert growth is not None
    after = apply(snapshot, plan, _request(ask, placement, ask.estimate))
    device = placement.devices[0]
    room = after.devices.get(device)
    spare = max((room.budget if room else 0) - after.held(device), 0)
    context, estimate = growth.fit(ask.estimate, spare)
    return Decision(ask, plan, replace(placement, context=context), estimate)


def _request(ask: Ask, placement: Placement, estimate: MemoryEstimate) -> Request:
    share = estimate.total_bytes // max(len(placement.devices), 1)
    return Request(ask.name, ask.key, {device: share for device in placement.devices}, ask.priority, ask.thread,
                   ask.remote, ask.base)


def _capped(placement: Placement, cap: int | None) -> Placement:
    """A model spread over several GPUs gets at most ``max_memory_per_model`` in all (split evenly)."""
    if cap is None or not placement.max_memory:
        return placement
    share = cap // len(placement.max_memory)
    return replace(placement, max_memory={device: min(room, share) for device, room in placement.max_memory.items()})


def _refusal_hint(ask: Ask, plan: Plan) -> str | None:
    if plan.verdict != "refuse" or not plan.shortfalls:
        return None
    hint = fit_hint(s.device for s in plan.shortfalls)
    if ask.growth is not None:
        return (f"max_context: auto needs room for at least {ask.growth.floor} tokens of context, and there is not "
                "that much room. " + hint)
    return hint


# -- several models, one after another ------------------------------------------------------------

#: Seconds between two simulated steps: enough to order them, as loading them one after another would.
_STEP = 1e-6

#: How one model of a simulation ends: loaded already (it stays), admitted, waits or refused.
Outcome = Decision | Holding


@dataclass(frozen=True)
class Simulation:
    """What loading the asks one after another, without waiting, does to the snapshot."""

    outcomes: tuple[Outcome, ...]
    before: Snapshot
    after: Snapshot
    evictions: tuple[Eviction, ...]  # every instance taken out on the way, in order
    #: (owner, key) of an evicted instance -> the model whose load evicted it
    causes: Mapping[tuple[str | None, str], str] = field(default_factory=dict)

    @property
    def fits(self) -> bool:
        """All admitted (or loaded already), and all of them loaded at once at the end."""
        held = {h.ident for h in self.after.holdings}
        return all(isinstance(o, Holding) or o.plan.admitted for o in self.outcomes) and all(
            _ident(o) in held for o in self.outcomes)

    def evicted_names(self) -> list[str]:
        """The ids of the instances taken out, each once, in order."""
        return list(dict.fromkeys(e.name for e in self.evictions))

    def evicted_by(self, key: str, owner: str | None = None) -> str | None:
        """The model whose load took the instance ``key`` (of ``owner``: another kernel) out, if one did."""
        return self.causes.get((owner, key))


def simulate(snapshot: Snapshot, asks: list[Ask]) -> Simulation:
    """Each ask in turn as admission would take it, with wait 0, on the snapshot its predecessors left.

    A model loaded already is used (its last use becomes now), one loading is
    joined; one leaving makes its request wait. After each admitted load, limits that
    could not be restored before (``limits_pending``) are enforced as the
    manager does after a load and again when its lease ends.
    """
    before = snapshot
    outcomes: list[Outcome] = []
    evictions: list[Eviction] = []
    causes: dict[tuple[str | None, str], str] = {}
    for step, ask in enumerate(asks):
        snapshot = replace(snapshot, now=before.now + step * _STEP)  # each load or use later than the last
        held = next((h for h in snapshot.own() if h.key == ask.key), None)
        if held is not None and held.state in ("loaded", "loading"):  # used at once, or its load joined
            snapshot = _used(snapshot, held)
            outcomes.append(held)
            snapshot = _restore(snapshot, None, evictions)
            continue
        if held is not None:
            outcomes.append(Decision(ask, Plan("wait", why=Leaving(held.name, held.state))))
            continue
        decision = decide(snapshot, ask)
        outcomes.append(decision)
        if decision.plan.admitted:
            taken = len(evictions)
            evictions += decision.plan.evictions
            snapshot = apply(snapshot, decision.plan, decision.request)
            snapshot = _restore(_restore(snapshot, ask.key, evictions), None, evictions)
            causes.update(((e.owner, e.key), ask.name) for e in evictions[taken:])
    return Simulation(tuple(outcomes), before, snapshot, tuple(evictions), causes)


def _used(snapshot: Snapshot, held: Holding) -> Snapshot:
    holdings = tuple(replace(h, last_used=snapshot.now) if h is held else h for h in snapshot.holdings)
    return replace(snapshot, holdings=holdings)


def _restore(snapshot: Snapshot, spare: str | None, evictions: list[Eviction]) -> Snapshot:
    """Limits left pending are enforced again (sparing the instance just loaded, while it is leased)."""
    if not snapshot.limits_pending:
        return snapshot
    plan = enforce(snapshot, spare=spare)
    evictions += plan.evictions
    gone = {(e.owner, e.key) for e in plan.evictions}
    return replace(snapshot, holdings=tuple(h for h in snapshot.holdings if h.ident not in gone),
                   limits_pending=not plan.admitted)


def _ident(outcome: Outcome) -> tuple[str | None, str]:
    return outcome.ident if isinstance(outcome, Holding) else (None, outcome.ask.key)
