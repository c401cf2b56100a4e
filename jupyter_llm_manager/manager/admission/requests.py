"""Admission: every load, use, generate and stream of a model gets a lease here, loading it first if needed.

- A loaded model is leased at once; a model loading in another thread is
  joined (one load serves every caller); remote models never wait for room.
- Otherwise the request joins the wait queue. The first waiter of the model
  placed next asks the policy for a plan on a fresh snapshot: admit (evict
  the victims, reserve the bytes, load), wait (until the state changes or
  the deadline passes; state ``waiting``, a ``waiting`` event with the queue
  position), or refuse at once when waiting cannot help.
- A LoRA adapter that shares its base is a step of the same path: the base
  is leased first, then the adapter, placed as a slice of the base's model.
- Ctrl-C during a wait cancels that wait only; the queue forgets it.

Deciding and reserving is :mod:`.deciding`, waiting :mod:`.waits`, loading
:mod:`.loading`; the fair queue is :mod:`.queue`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from ...backends import Backend, Placement
from ...devices import DeviceProbe
from ...errors import CopyNotHeld, GenerationError, LLMManagerError, ModelLoadingError, ResourceNotAvailableError
from ...estimates import EstimateCache, remote_estimate
from ...events import EventBus
from ...support.deadlines import Deadline
from ..adapters.specs import shares_base
from ..cooperation import Cooperation
from ..instances import Instance, TurnHeld, TurnTimeout
from ..state import Leases, ManagerState, Ticket
from ..unloading.evictions import Evictions
from .deciding import Decider
from .loading import Loading
from .outcomes import Admitted, Again, AskOthers, Load, NeedsBase, Queued, Wait
from .queue import Waiter
from .waits import Waits

__all__ = ["Admission"]


class Admission:
    """Grants leases, loading and waiting for room as needed (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, probe: DeviceProbe, backends: Callable[[str], Backend],
                 estimates: EstimateCache, leases: Leases, evictions: Evictions, loading: Loading,
                 cooperation: Cooperation) -> None:
        self._cooperation = cooperation
        self._state = state
        self._backends = backends
        self._leases = leases
        self._evictions = evictions
        self._loading = loading
        self._decider = Decider(state, bus, probe, backends, estimates, evictions, cooperation)
        self._waits = Waits(state, bus, cooperation)

    def acquire(self, model_id: str, deadline: Deadline, *, activate: bool = False, existing: bool = False) -> Ticket:
        """A lease on ``model_id`` for the calling thread, waiting for room until ``deadline``.

        A LoRA adapter that shares its base holds a lease on the base too,
        taken first (the base loads, or stays, while the adapter is used; its
        row shows ``loaded``); both are released together. ``activate`` (a
        ``use()`` lease): the shared model is made to answer as ``model_id``
        before it is handed out; the next request on the same base may switch it. ``existing`` (a request lent
        to another member): only an instance loaded or loading now is leased, never a new load
        (:class:`~jupyter_llm_manager.errors.CopyNotHeld` otherwise).
        """
        found = self._lease(model_id, deadline, None, existing)
        if isinstance(found, NeedsBase):  # the adapter step: its base first, then the adapter on it
            base = self._lease(found.base_id, deadline, None, existing)
            assert isinstance(base, Ticket), "a base is no adapter sharing a base"
            try:
                found = self._lease(model_id, deadline, base.instance, existing)
            except BaseException:
                base.release()
                raise
            assert isinstance(found, Ticket)
            found.companion = base
        if activate:
            self._activate(found, deadline)
        return found

    def _activate(self, ticket: Ticket, deadline: Deadline) -> None:
        """A ``use()`` lease of a model that answers one request at a time: its turn held for the whole block.

        A model sharing its base answers as this one; the turn is the base's
        (its requests and its adapters' take turns). A llama.cpp model, whose
        object is not thread-safe, is used by this block alone: no other
        thread's request (nor another process's, borrowing it) runs on it
        meanwhile. Inside the block this thread may still generate with the
        same model. Another adapter's turn held by this thread (a stream not
        finished) refuses it at once.
        """
        instance = ticket.instance
        if not instance.serial:
            return
        turns = instance.turns
        try:
            try:
                ticket.turn = (turns, turns.take(deadline, _told_nobody, owner=instance.key, nests=True))
            except TurnHeld as held:
                if instance.base is None and not instance.has_adapters:
                    raise GenerationError(f"{ticket.canonical!r} answers one request at a time, and this thread has "
                                          "one running on it (a stream it has not finished): finish or close it "
                                          "first", model_id=ticket.canonical) from None
                raise GenerationError(f"{ticket.canonical!r} shares one model with other adapters of its base, and "
                                      f"this thread holds that model for {held.owner or 'another request'} (a "
                                      "stream it has not finished, or a `use()` block): finish it first",
                                      model_id=ticket.canonical) from None
            except TurnTimeout:
                raise ResourceNotAvailableError(f"Cannot use {ticket.canonical!r}: it answered other requests until "
                                                "the deadline (it answers one at a time)",
                                                model_id=ticket.canonical) from None
            instance.backend.use_adapter(ticket.loaded)
        except BaseException:
            ticket.release()
            raise

    def _lease(self, model_id: str, deadline: Deadline, base: Instance | None,
               existing: bool = False) -> Ticket | NeedsBase:
        """The lease loop: lease, join a load, load, or queue, plan and wait, until granted or refused."""
        waiter: Waiter | None = None
        told, promised = "", False  # promised: this thread may be counted as a joiner of a load
        try:
            while True:
                found = self._look(model_id, waiter, base, existing)
                if isinstance(found, (Ticket, NeedsBase)):
                    return found
                if isinstance(found, Instance):  # a load in flight, or an instance just leaving
                    promised = True
                    self._settle(found)
                    continue
                if isinstance(found, Load):
                    promised = True  # the load publishes it promised to this thread
                    self._loading.run(found.canonical, found.instance)
                    continue
                waiter, promised = found.waiter, True
                outcome = self._decider.plan(waiter) if found.may_plan else Wait(None, found.version)
                if outcome is Again.LOOK:
                    continue
                if isinstance(outcome, Admitted):
                    self._cooperation.dequeue(waiter.ledger, waiter.row)
                    waiter = None  # served: the queue no longer holds it
                    self._place(outcome)
                    continue
                if isinstance(outcome, AskOthers):
                    pause = self._decider.ask_others(waiter, outcome, deadline)
                    if pause is not None:  # they answered and freed nothing: look again in a moment
                        told = self._waits.wait(waiter, pause, deadline, told)
                    continue
                told = self._waits.wait(waiter, outcome, deadline, told)
        finally:
            if promised:
                self._leave(waiter)

    # -- one look at the state -------------------------------------------------------------------

    def _look(self, model_id: str, waiter: Waiter | None, base: Instance | None,
              existing: bool = False) -> Ticket | NeedsBase | Instance | Load | Queued:
        """Lease, join, load or queue (or lease the base first): what to do next, decided under the lock."""
        me = threading.get_ident()
        state = self._state
        with state.lock:
            state.check_open()
            canonical = state.registry.resolve(model_id)
            key = state.registry.keys[canonical]
            spec = state.registry.specs[canonical]
            if base is None and spec.base is not None and shares_base(spec, self._backends(spec.backend)):
                return NeedsBase(state.registry.resolve(spec.base))
            instance = state.instances.get(key)
            if instance is None and existing:
                raise CopyNotHeld(canonical)
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
            backend = self._backends(spec.backend)
            if backend.remote:  # holds no local memory: never waits for room
                instance = Instance(key, spec, backend, remote_estimate(canonical), Placement(()), loader=me)
                state.instances[key] = instance
                state.touch()
                return Load(canonical, instance)
            if waiter is None:
                waiter = self._enqueue(key, canonical, me)
                waiter.base = base
            may_plan = state.queue.may_plan(waiter)
            if may_plan:
                state.queue.planner = waiter
            return Queued(waiter, may_plan, state.version)

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

    def _place(self, admitted: Admitted) -> None:
        """Free the victims, then load; an interrupt while freeing abandons the reserved instance."""
        instance = admitted.instance
        try:
            self._evictions.release(admitted.victims)
        except BaseException as error:
            self._loading.abandon(instance.spec.id, instance, error)
            raise
        self._loading.run(instance.spec.id, instance)

    def _leave(self, waiter: Waiter | None) -> None:
        """The calling thread stops asking: out of the queue, and no longer promised a lease."""
        me = threading.get_ident()
        if waiter is not None:
            self._cooperation.dequeue(waiter.ledger, waiter.row)
            waiter.ledger = waiter.row = None
        state = self._state
        with state.lock:
            if waiter is not None and (waiter in state.queue or state.queue.planner is waiter):
                state.queue.remove(waiter)
                state.touch()
            for instance in state.instances.values():
                if me in instance.joiners:
                    instance.joiners.discard(me)
                    state.touch()


def _told_nobody(ahead: int) -> None:
    """A ``use()`` lease waits for the base's requests in flight without an event (they end soon)."""
