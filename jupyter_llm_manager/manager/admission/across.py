"""Waiting across kernels: what a waiting request tells the others, and the wait that would never end.

A request told to wait writes in the ledger which models its thread leases
and which of the other kernels' models in use it cannot be placed without
(:class:`~..policy.cycles.WaitingRequest`). Before it waits, it reads the
others' rows: requests that wait for its own thread's leases are not ahead
of it in the machine-wide queue, and when models such requests lease keep it
out for good, the two would wait for each other: it is refused at once,
naming the other kernel and its model, as the same cycle inside one kernel is.
"""

from __future__ import annotations

from ...errors import MemoryHolder, ResourceNotAvailableError
from ..cooperation import Others
from ..policy.cycles import WaitingRequest, deadlock, needs_gone, waiting_on
from ..policy.decision import Decision
from ..policy.fit import Snapshot
from ..policy.reasons import Cause, Limit, Refused
from ..state import ManagerState
from .outcomes import Refuse, Wait
from .queue import Waiter

__all__ = ["Across"]


class Across:
    """One request's waits as the other kernels see them (see the module docstring). Lock held by the caller."""

    def __init__(self, state: ManagerState, waiter: Waiter, others: Others, me: str) -> None:
        self._state = state
        self._waiter = waiter
        self._others = others
        self._me = me
        self.mine = frozenset(key for key, i in state.instances.items() if i.leased_by(waiter.thread))
        rows = [w for w in others.waits if (w.member, w.request) != (me, waiter.order)]
        self.behind = waiting_on(rows, me, self.mine) if self.mine else []

    def arrivals_behind(self) -> frozenset[int]:
        """The places in the machine-wide queue of requests that wait for this thread to let go."""
        return frozenset(w.arrival for w in self.behind if w.arrival is not None)

    def wait(self, snapshot: Snapshot, decision: Decision) -> Wait | Refuse:
        """Wait (saying what for, when other kernels' models in use are in the way), or refuse a wait for ever."""
        request = decision.request
        blocking = deadlock(snapshot, request, self.behind, self._me) if self.behind else ()
        if blocking:
            holders = tuple(MemoryHolder(h.name, h.total_bytes, self._why(h.owner or "", h.key)) for h in blocking)
            reason = Refused(self._waiter.name, Limit.NONE, Cause.EACH_OTHER, holders)
            return Refuse(ResourceNotAvailableError(reason.text(), model_id=self._waiter.name))
        needs = needs_gone(snapshot, request)
        waiting = WaitingRequest(self._me, self._waiter.order, self._waiter.name, self.mine, needs,
                                 self._waiter.ledger) if needs else None
        return Wait(decision.plan, self._state.version, waiting)

    def _why(self, member: str, key: str) -> str:
        """``in use in a.ipynb (pid 12), whose request for 'y' waits for 'x', which this thread holds``."""
        wanted = next((f" for {w.model_id!r}" for w in self.behind if w.member == member and key in w.holds), "")
        state = self._state
        held = ", ".join(repr(state.name_of(state.instances[k])) for k in sorted(self.mine) if k in state.instances)
        return f"in use in {self._others.named(member)}, whose request{wanted} waits for {held}, which this thread holds"
