"""Deciding on a request: the facts gathered, the policy's decision on one snapshot, and the room reserved.

The request placed next gathers what deciding on its model needs (with no
lock held), then, inside one ledger transaction (:meth:`~..cooperation.Cooperation.placement`),
reads what the other kernels hold and wait for, asks the policy
(:func:`~..policy.decision.decide`, the very function ``plan()`` simulates)
and, when admitted, reserves: the victims taken out, the new instance in
(``loading``), the reservation written for the others to see. A LoRA adapter
that shares its base is reserved as a slice of the base's loaded model
(:class:`~..adapters.binding.AdapterOnBase`), taking turns with it. A request
told to wait writes what it waits for in other kernels in the same
transaction, and is refused when those kernels wait for it in turn (:mod:`.across`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

from ...backends import Backend
from ...config.spec import ModelSpec
from ...devices import DeviceMemory, DeviceProbe
from ...errors import LLMManagerError
from ...estimates import EstimateCache
from ...events import EventBus
from ...support.deadlines import Deadline
from ...support.units import format_bytes
from ..adapters.binding import AdapterOnBase
from ..cooperation import Cooperation, Others, Placing
from ..cooperation.peers import ANSWER_S
from ..instances import Instance
from ..planning import ModelSizing, gather
from ..policy import fit as policy
from ..policy.decision import Decision, decide
from ..policy.reasons import AskedForRoom, LedgerLocked, LedgerRecreated
from ..state import ManagerState
from ..unloading.evictions import Evictions
from .across import Across
from .outcomes import Admitted, Again, AskOthers, Refuse, Wait
from .queue import Waiter

__all__ = ["ASK_AT_LEAST_S", "Decider"]

#: The least time another kernel is given to answer a request for room, even a request that may not wait.
ASK_AT_LEAST_S = 0.2


class Decider:
    """Decides on the request placed next and reserves its room (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, probe: DeviceProbe, backends: Callable[[str], Backend],
                 estimates: EstimateCache, evictions: Evictions, cooperation: Cooperation) -> None:
        self._state = state
        self._bus = bus
        self._probe = probe
        self._backends = backends
        self._estimates = estimates
        self._evictions = evictions
        self._cooperation = cooperation

    def plan(self, waiter: Waiter) -> Admitted | Wait | AskOthers | Literal[Again.LOOK]:
        """Gather the sizing (no lock), then decide and, when admitted, reserve (under the lock).

        The decision is :func:`~.policy.decision.decide`, the very function
        ``plan()`` simulates: what a plan says is what admission does.
        """
        try:
            state = self._state
            with state.lock:
                spec = state.registry.specs.get(waiter.name)
                if spec is None or state.registry.keys[waiter.name] != waiter.key:
                    return Again.LOOK  # unregistered or replaced meanwhile
            sizing = self.sizing(waiter.name, spec)
            memories = self._probe()  # before the lock: a first probe of the GPUs may take a while
            if sizing.backend.remote:
                outcome = self._decide(waiter, spec, sizing, Others(), memories)
            else:
                with self._cooperation.placement() as placing:  # one ledger transaction: read, decide, write
                    outcome = self._decide(waiter, spec, sizing, placing.others, memories)
                    if isinstance(outcome, Admitted):
                        placing.publish()  # the others see the reservation when the transaction ends
                    _tell_what_it_waits_for(placing, waiter, outcome)
            if isinstance(outcome, Refuse):
                raise outcome.error  # once the ledger says it waits no more: the other request is not refused too
            return outcome
        finally:
            state = self._state
            with state.lock:
                if state.queue.planner is waiter:
                    state.queue.planner = None
                    state.wake_planner()  # nothing changed: no new version, or this waiter would plan again at once

    def _decide(self, waiter: Waiter, spec: ModelSpec, sizing: ModelSizing, others: Others,
                memories: Sequence[DeviceMemory]) -> Admitted | Wait | Refuse | AskOthers | Literal[Again.LOOK]:
        """Decide on the request with what every kernel holds and, when admitted, reserve (under the lock)."""
        state = self._state
        with state.lock:
            if state.registry.keys.get(waiter.name) != waiter.key or waiter.key in state.instances:
                return Again.LOOK  # the model changed meanwhile
            waiter.polls = bool(others.holdings or others.requests or others.busy or others.recreated)
            if others.busy or others.recreated:  # placing now could over-commit: the ledger is locked by another
                # process, or another kernel has not written the recreated ledger yet
                waiter.waiting_for = (LedgerLocked() if others.busy else LedgerRecreated()).text()
                return Wait(None, state.version)
            across = Across(state, waiter, others, self._cooperation.member)
            elsewhere = others.seen_by(waiter.ledger, waiter.unanswered, across.arrivals_behind())
            snapshot = state.snapshot(memories, elsewhere=elsewhere)
            decision = decide(snapshot, sizing.ask(state, waiter.thread))
            waiter.needed = dict(decision.request.needed)
            waiter.ahead_elsewhere = len(elsewhere.ahead)
            foreign = tuple(e for e in decision.plan.evictions if e.owner is not None)
            if decision.plan.admitted and foreign:
                return AskOthers(foreign, others, state.registry.priority(waiter.key))
            if decision.plan.admitted:
                return self._reserve(waiter, self._instance(waiter, spec, sizing, decision), decision.plan)
            waiter.waiting_for = decision.plan.reason
            if decision.plan.verdict == "refuse":
                raise decision.error()
            return across.wait(snapshot, decision)

    @staticmethod
    def _instance(waiter: Waiter, spec: ModelSpec, sizing: ModelSizing, decision: Decision) -> Instance:
        """The new instance an admitted decision reserves; a shared adapter's lives on its (leased) base."""
        estimate = decision.estimate or sizing.estimate
        needed = dict(decision.request.needed)
        base = waiter.base
        if base is None:
            return Instance(waiter.key, spec, sizing.backend, estimate, decision.placement, loader=waiter.thread,
                            bytes=needed)
        return Instance(waiter.key, spec, AdapterOnBase(sizing.backend, base), estimate, decision.placement,
                        loader=waiter.thread, bytes=needed, base=base.key, turns=base.turns)

    def ask_others(self, waiter: Waiter, asking: AskOthers, deadline: Deadline) -> Wait | None:
        """Ask the kernels holding the victims to evict them; one that does not answer is named later.

        A :class:`Wait` (a moment, or until the deadline) when every holder answered and none freed anything:
        asking again at once would never end while what this manager counts of them is not what they hold.

        What they evicted is a ``made_room`` event of this request's model, in the requesting thread.

        They have until the request's deadline (at least :data:`ASK_AT_LEAST_S`, at most
        :data:`~..cooperation.peers.ANSWER_S`): an idle holder answers in milliseconds, and a request
        never waits much past its ``wait`` for one that does not answer.
        """
        remaining = deadline.remaining()
        timeout = min(ANSWER_S, max(remaining if remaining is not None else ANSWER_S, ASK_AT_LEAST_S))
        asked = self._cooperation.ask_to_evict(asking.evictions, asking.others, asking.priority, timeout)
        for gone in asked.evicted:  # this request's notebook is told what it took, and where
            held = f"; {format_bytes(gone.held_bytes)} still held there" if gone.held_bytes else ""
            self._bus.emit("made_room", waiter.name, bytes=gone.freed_bytes,
                           message=f"evicted {gone.model_id} from {gone.where}{held}")
        silent = asked.silent
        if silent:
            names = tuple(asking.others.named(member) for member in sorted(silent))
            waiter.unanswered |= frozenset(silent)
            waiter.unanswered_names = tuple(dict.fromkeys(waiter.unanswered_names + names))
        if silent or asked.evicted:
            return None
        with self._state.lock:
            waiter.polls = True
            waiter.waiting_for = AskedForRoom(tuple(sorted({asking.others.named(e.owner) for e in asking.evictions
                                                           if e.owner is not None}))).text()
            return Wait(None, self._state.version)

    def sizing(self, canonical: str, spec: ModelSpec) -> ModelSizing:
        """What the decision needs; an estimate that fails is this model's failure (its row and an event)."""
        backend = self._backends(spec.backend)
        try:
            return gather(spec, backend, self._estimates)
        except LLMManagerError as error:
            state = self._state
            with state.lock:
                state.failures[canonical] = str(error)
            self._bus.emit("load_failed", canonical, message=str(error))
            raise

    def _reserve(self, waiter: Waiter, instance: Instance, plan: policy.Plan) -> Admitted:
        """Execute an admit plan in the state: victims out, the new instance in (loading). Lock held."""
        state = self._state
        first = state.queue.first(instance.key) or waiter
        blocked = [w.blocked_since for w in (first, waiter) if w.blocked_since is not None]
        instance.arrival, instance.waited = first.order, state.clock() - min(blocked) if blocked else None
        instance.joiners = state.queue.threads_for(instance.key) - {waiter.thread}  # served by this one load
        if waiter.base is not None:
            waiter.base.take_adapters()  # the base's requests take turns with its adapters' from now on
        victims = self._evictions.take_out(plan.evictions)
        for victim, _ in victims:  # their memory on these devices is the new instance's reservation now
            for device in instance.placement.devices:
                victim.bytes.pop(device, None)
        state.instances[instance.key] = instance
        for served in state.queue.serve(instance.key):
            if served.wake is not None:
                served.wake.notify()  # they join the load now
        state.touch()
        return Admitted(instance, victims)


def _tell_what_it_waits_for(placing: Placing, waiter: Waiter, outcome: object) -> None:
    """Write the request's row of what it waits for in other kernels, or take it out when it waits for none."""
    waiting = outcome.waiting if isinstance(outcome, Wait) else None
    if waiting is not None:
        placing.record_wait(waiting)
        waiter.row = waiting.request
    elif waiter.row is not None:
        placing.forget_wait(waiter.row)
