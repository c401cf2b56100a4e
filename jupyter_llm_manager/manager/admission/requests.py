"""Admission: every load, use, generate and stream of a model gets a lease here, loading it first if needed.

- A loaded model is leased at once; a model loading in another thread is
  joined (one load serves every caller); remote models never wait for room.
- Otherwise the request joins the wait queue. The first waiter of the model
  placed next asks the policy for a plan on a fresh snapshot: admit (evict
  the victims, reserve the bytes, load), wait (until the state changes or
  the deadline passes; state ``waiting``, a ``waiting`` event with the queue
  position), or refuse at once when waiting cannot help.
- Ctrl-C during a wait cancels that wait only; the queue forgets it.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from ...backends import Backend, Placement
from ...config.spec import ModelSpec
from ...devices import DeviceMemory, DeviceProbe
from ...errors import LLMManagerError, ModelLoadingError, ResourceNotAvailableError
from ...estimates import EstimateCache, remote_estimate
from ...events import EventBus
from ...support.deadlines import Deadline
from ..cooperation import Cooperation, Others
from ..cooperation.membership import ANSWER_S, POLL_S
from ..instances import Instance
from ..planning import ModelSizing, gather
from ..policy import fit as policy
from ..policy.decision import decide
from ..policy.reasons import BeingPlaced, LedgerLocked, QueuedLocally
from ..state import Leases, ManagerState, Ticket
from ..unloading.evictions import Evictions, Victims
from .loading import Loading
from .queue import Waiter

__all__ = ["Admission"]


class _Again(enum.Enum):
    LOOK = "the state changed while a plan was prepared: look at it again"


@dataclass(frozen=True)
class _Load:
    """This thread owns a new instance: load it now."""

    canonical: str
    instance: Instance


@dataclass(frozen=True)
class _Queued:
    waiter: Waiter
    may_plan: bool
    version: int  # of the state when this was decided: a change after it wakes the waiter


@dataclass(frozen=True)
class _Admitted:
    instance: Instance
    victims: Victims


@dataclass(frozen=True)
class _Wait:
    plan: policy.Plan | None
    version: int


@dataclass(frozen=True)
class _AskOthers:
    """The decision evicts other kernels' models: ask them, then look again."""

    evictions: tuple[policy.Eviction, ...]
    others: Others
    priority: int


class Admission:
    """Grants leases, loading and waiting for room as needed (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, probe: DeviceProbe, backends: Callable[[str], Backend],
                 estimates: EstimateCache, leases: Leases, evictions: Evictions, loading: Loading,
                 cooperation: Cooperation, *, bind: Callable[[ModelSpec, Backend], Backend] | None = None) -> None:
        self._cooperation = cooperation
        self._state = state
        self._bus = bus
        self._probe = probe
        self._backends = backends
        self._estimates = estimates
        self._leases = leases
        self._evictions = evictions
        self._loading = loading
        self._bind = bind  # LoRA adapters: the backend bound to their loaded base (see manager.adapters)

    def acquire(self, model_id: str, deadline: Deadline) -> Ticket:
        """A lease on ``model_id`` for the calling thread, waiting for room until ``deadline``."""
        waiter: Waiter | None = None
        told, promised = "", False  # promised: this thread may be counted as a joiner of a load
        try:
            while True:
                found = self._look(model_id, waiter)
                if isinstance(found, Ticket):
                    return found
                if isinstance(found, Instance):  # a load in flight, or an instance just leaving
                    promised = True
                    self._settle(found)
                    continue
                if isinstance(found, _Load):
                    promised = True  # the load publishes it promised to this thread
                    self._loading.run(found.canonical, found.instance)
                    continue
                waiter, promised = found.waiter, True
                outcome = self._plan(waiter) if found.may_plan else _Wait(None, found.version)
                if outcome is _Again.LOOK:
                    continue
                if isinstance(outcome, _Admitted):
                    self._cooperation.dequeue(waiter.ledger)
                    waiter = None  # served: the queue no longer holds it
                    self._place(outcome)
                    continue
                if isinstance(outcome, _AskOthers):
                    self._ask_others(waiter, outcome)
                    continue
                told = self._wait(waiter, outcome, deadline, told)
        finally:
            if promised:
                self._leave(waiter)

    # -- one look at the state -------------------------------------------------------------------

    def _look(self, model_id: str, waiter: Waiter | None) -> Ticket | Instance | _Load | _Queued:
        """Lease, join, load or queue: what to do next, decided under the lock."""
        me = threading.get_ident()
        state = self._state
        with state.lock:
            state.check_open()
            canonical = state.registry.resolve(model_id)
            key = state.registry.keys[canonical]
            instance = state.instances.get(key)
            if instance is not None:
                if instance.state == "loaded":
                    instance.joiners.discard(me)
                    return self._leases.grant(model_id, canonical, instance)
                if instance.loader == me:
                    raise LLMManagerError(
                        f"{canonical!r} is being loaded by this very thread (an event callback cannot wait for the "
                        "load that emitted the event); act on its 'loaded' event instead")
                if instance.state == "loading":
                    instance.joiners.add(me)  # promised a lease when the load ends
                return instance
            if waiter is not None and (waiter.key != key or waiter not in state.queue):
                state.queue.remove(waiter)  # re-registered meanwhile, or served by a load that then failed
                waiter = None
            spec = state.registry.specs[canonical]
            backend = self._backends(spec.backend)
            if backend.remote:  # holds no local memory: never waits for room
                instance = Instance(key, spec, backend, remote_estimate(canonical), Placement(()), loader=me)
                state.instances[key] = instance
                state.touch()
                return _Load(canonical, instance)
            if waiter is None:
                waiter = self._enqueue(key, canonical, me)
            may_plan = state.queue.may_plan(waiter)
            if may_plan:
                state.queue.planner = waiter
            return _Queued(waiter, may_plan, state.version)

    def _enqueue(self, key: str, canonical: str, thread: int) -> Waiter:
        state = self._state
        limit = state.settings.max_queue
        if len(state.queue) >= limit:
            raise ResourceNotAvailableError(
                f"Cannot queue the request for {canonical!r}: {len(state.queue)} requests already wait for room "
                f"(max_queue={limit}).", model_id=canonical, hint="Try again later, or raise max_queue.")
        waiter = state.queue.add(key, canonical, thread, holds_leases=state.holds_leases(thread))
        waiter.wake = state.new_wake()
        state.touch()
        return waiter

    def _settle(self, instance: Instance) -> None:
        """Wait for a load in flight to end (it ends, either way), or for an instance to finish leaving."""
        if instance.state == "loading":
            instance.ready.wait()
            error = instance.error
            if error is not None and not isinstance(error, (ResourceNotAvailableError, KeyboardInterrupt)):
                canonical = self._state.name_of(instance)
                raise ModelLoadingError(f"loading {canonical!r} failed in another thread: {error}",
                                        model_id=canonical) from error
            return  # loaded: lease it; refused or interrupted: that was the other caller's answer, try ours
        state = self._state
        with state.lock:  # leaving (unloading): it goes in a moment, whatever happens
            while state.instances.get(instance.key) is instance and not state.closed:
                state.changed.wait()

    # -- planning ------------------------------------------------------------------------------

    def _plan(self, waiter: Waiter) -> _Admitted | _Wait | _AskOthers | Literal[_Again.LOOK]:
        """Gather the sizing (no lock), then decide and, when admitted, reserve (under the lock).

        The decision is :func:`~.policy.decision.decide`, the very function
        ``plan()`` simulates: what a plan says is what admission does.
        """
        try:
            state = self._state
            with state.lock:
                spec = state.registry.specs.get(waiter.name)
                if spec is None or state.registry.keys[waiter.name] != waiter.key:
                    return _Again.LOOK  # unregistered or replaced meanwhile
            sizing = self._sizing(waiter.name, spec)
            memories = self._probe()  # before the lock: a first probe of the GPUs may take a while
            if sizing.backend.remote:
                return self._decide(waiter, spec, sizing, Others(), memories)
            with self._cooperation.placement() as placing:  # one ledger transaction: read, decide, write
                outcome = self._decide(waiter, spec, sizing, placing.others, memories)
                if isinstance(outcome, _Admitted):
                    placing.publish()  # the others see the reservation when the transaction ends
                return outcome
        finally:
            state = self._state
            with state.lock:
                if state.queue.planner is waiter:
                    state.queue.planner = None
                    state.wake_planner()  # nothing changed: no new version, or this waiter would plan again at once

    def _decide(self, waiter: Waiter, spec: ModelSpec, sizing: ModelSizing, others: Others,
                memories: Sequence[DeviceMemory]) -> _Admitted | _Wait | _AskOthers | Literal[_Again.LOOK]:
        """Decide on the request with what every kernel holds and, when admitted, reserve (under the lock)."""
        state = self._state
        elsewhere = others.seen_by(waiter.ledger, waiter.unanswered)
        with state.lock:
            if state.registry.keys.get(waiter.name) != waiter.key or waiter.key in state.instances:
                return _Again.LOOK  # the model changed meanwhile
            waiter.polls = bool(others.holdings or others.requests or others.busy)
            if others.busy:  # another process keeps the ledger locked: placing now could over-commit
                waiter.waiting_for = LedgerLocked().text()
                return _Wait(None, state.version)
            decision = decide(state.snapshot(memories, elsewhere=elsewhere), sizing.ask(state, waiter.thread))
            waiter.needed = dict(decision.request.needed)
            waiter.ahead_elsewhere = len(elsewhere.ahead)
            foreign = tuple(e for e in decision.plan.evictions if e.owner is not None)
            if decision.plan.admitted and foreign:
                return _AskOthers(foreign, others, state.registry.priority(waiter.key))
            if decision.plan.admitted:
                estimate = decision.estimate or sizing.estimate
                instance = Instance(waiter.key, spec, sizing.backend, estimate, decision.placement,
                                    loader=waiter.thread, bytes=dict(decision.request.needed))
                return self._reserve(waiter, instance, decision.plan)
            waiter.waiting_for = decision.plan.reason
            if decision.plan.verdict == "refuse":
                raise decision.error()
            return _Wait(decision.plan, state.version)

    def _ask_others(self, waiter: Waiter, asking: _AskOthers) -> None:
        """Ask the kernels holding the victims to evict them; one that does not answer is named later."""
        silent = self._cooperation.ask_to_evict(asking.evictions, asking.others, asking.priority)
        if silent:
            names = tuple(asking.others.named(member) for member in sorted(silent))
            waiter.unanswered |= frozenset(silent)
            waiter.unanswered_names = tuple(dict.fromkeys(waiter.unanswered_names + names))

    def _sizing(self, canonical: str, spec: ModelSpec) -> ModelSizing:
        """What the decision needs; an estimate that fails is this model's failure (its row and an event)."""
        backend = self._backends(spec.backend)
        try:
            backend = self._bind(spec, backend) if self._bind is not None else backend
            return gather(spec, backend, self._estimates)
        except LLMManagerError as error:
            state = self._state
            with state.lock:
                state.failures[canonical] = str(error)
            self._bus.emit("load_failed", canonical, message=str(error))
            raise

    def _place(self, admitted: _Admitted) -> None:
        """Free the victims, then load; an interrupt while freeing abandons the reserved instance."""
        instance = admitted.instance
        try:
            self._evictions.release(admitted.victims)
        except BaseException as error:
            self._loading.abandon(instance.spec.id, instance, error)
            raise
        self._loading.run(instance.spec.id, instance)

    def _reserve(self, waiter: Waiter, instance: Instance, plan: policy.Plan) -> _Admitted:
        """Execute an admit plan in the state: victims out, the new instance in (loading). Lock held."""
        state = self._state
        first = state.queue.first(instance.key) or waiter
        blocked = [w.blocked_since for w in (first, waiter) if w.blocked_since is not None]
        instance.arrival, instance.waited = first.order, state.clock() - min(blocked) if blocked else None
        instance.joiners = state.queue.threads_for(instance.key) - {waiter.thread}  # served by this one load
        victims = self._evictions.take_out(plan.evictions)
        for victim, _ in victims:  # their memory on these devices is the new instance's reservation now
            for device in instance.placement.devices:
                victim.bytes.pop(device, None)
        state.instances[instance.key] = instance
        for served in state.queue.serve(instance.key):
            if served.wake is not None:
                served.wake.notify()  # they join the load now
        state.touch()
        return _Admitted(instance, victims)

    # -- waiting ---------------------------------------------------------------------------------

    def _wait(self, waiter: Waiter, outcome: _Wait, deadline: Deadline, told: str) -> str:
        """Wait for the state to change; raise when the deadline has passed. Returns what was told."""
        state = self._state
        with state.lock:
            if waiter.blocked_since is None:
                waiter.blocked_since = state.clock()
            version = outcome.version
            position = (state.queue.position(waiter.key) or 1) + waiter.ahead_elsewhere
            ahead = tuple(state.queue.names_ahead(waiter.key))
            reason = (waiter.waiting_for or state.queue.waiting_for(waiter.key)
                      or (QueuedLocally(ahead) if ahead else BeingPlaced()).text())
        if deadline.expired:
            raise self._gave_up(waiter, deadline, reason)
        self._queue_on_machine(waiter)
        message = f"{reason} (queue position {position})"
        if message != told:
            self._bus.emit("waiting", waiter.name, message=reason, position=position, arrival=waiter.order)
        state = self._state
        with state.lock:  # what other kernels do wakes nobody here: look again every moment
            remaining = deadline.remaining()
            poll = state.deadline(min(POLL_S, remaining if remaining is not None else POLL_S)) if waiter.polls else None
            state.wait_for_change(version, poll or deadline, waiter.wake)
        return message

    def _queue_on_machine(self, waiter: Waiter) -> None:
        """A request waiting on other kernels takes its place in the machine's queue, saying what it needs."""
        if waiter.ledger is not None:
            if waiter.needed != waiter.published:
                self._cooperation.requeue(waiter.ledger, waiter.needed)
                waiter.published = waiter.needed
        elif waiter.polls:
            with self._state.lock:
                priority = self._state.registry.priority(waiter.key)
            waiter.ledger = self._cooperation.enqueue(waiter.name, waiter.needed, priority)
            waiter.published = waiter.needed

    def _gave_up(self, waiter: Waiter, deadline: Deadline, reason: str) -> ResourceNotAvailableError:
        waited = "without waiting" if deadline.seconds == 0 else f"after waiting {deadline.seconds:g} s"
        if waiter.unanswered_names:
            reason += (f"; {', '.join(waiter.unanswered_names)} did not answer within {ANSWER_S:g} s when asked to "
                       "make room")
        return ResourceNotAvailableError(
            f"Cannot load {waiter.name!r} {waited}: {reason}.", model_id=waiter.name,
            hint="Pass wait= a longer time (math.inf: no limit) or raise wait_timeout, or unload a model.")

    def _leave(self, waiter: Waiter | None) -> None:
        """The calling thread stops asking: out of the queue, and no longer promised a lease."""
        me = threading.get_ident()
        if waiter is not None:
            self._cooperation.dequeue(waiter.ledger)
            waiter.ledger = None
        state = self._state
        with state.lock:
            if waiter is not None and (waiter in state.queue or state.queue.planner is waiter):
                state.queue.remove(waiter)
                state.touch()
            for instance in state.instances.values():
                if me in instance.joiners:
                    instance.joiners.discard(me)
                    state.touch()
