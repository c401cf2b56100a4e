"""Cooperating with the other members: placing a model, the machine-wide queue, asking for room, the report.

A placement reads the others and writes this manager's reservation in one
ledger transaction (:meth:`Cooperation.placement`). Without cooperation, or
while the ledger cannot be used, the others are nobody and this manager
works alone (with one warning); a ledger another process keeps locked means
nothing can be placed safely now, and the request waits.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import replace
from functools import partial
from typing import TypeVar

from ...errors import ConfigurationError
from ...events import EventBus
from ...reports import MachineModel, MachineReport
from ..policy.fit import Eviction
from ..state import ManagerState
from . import peers
from .ledger import AllRows, LedgerBusy
from .machine import machine_report
from .membership import LEDGER_FAILURES, EvictFor, Membership, UnloadFor
from .peers import ANSWER_S, Asked, Others, others_from
from .rows import CopyRow, MemberRow, ModelRow, WaitingRequest

__all__ = ["Cooperation", "Placing"]

log = logging.getLogger(__name__)

_T = TypeVar("_T")


class Placing:
    """One placement as admission sees it: the others, read inside the ledger's transaction, and publishing."""

    def __init__(self, others: Others, publish: Callable[[], None] = lambda: None,
                 record: Callable[[WaitingRequest], None] = lambda _: None,
                 forget: Callable[[int], None] = lambda _: None) -> None:
        self.others = others
        self._publish = publish
        self._record = record
        self._forget = forget

    def publish(self) -> None:
        """Write this manager's rows (its reservation) before the placement ends: the next one sees it."""
        self._publish()

    def record_wait(self, waiting: WaitingRequest) -> None:
        """A request waits for other kernels' models in use: its row, seen by the next placement anywhere."""
        self._record(waiting)

    def forget_wait(self, request: int) -> None:
        """The request with id ``request`` waits for no model in use any more (admitted, refused)."""
        self._forget(request)


class Cooperation:
    """The cooperation part of one manager (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, evict_for: EvictFor, unload_for: UnloadFor) -> None:
        self._state = state
        self.membership = Membership(state, bus, evict_for, unload_for)

    @property
    def member(self) -> str:
        return self.membership.me.member

    @property
    def pid(self) -> int:
        return self.membership.me.pid

    @property
    def notebook(self) -> str:
        return self.membership.me.notebook

    def stop(self) -> None:
        """Leave the ledger (it may join again at its next placement)."""
        self.membership.stop()

    def publish_soon(self) -> None:
        self.membership.publish_soon()

    @contextmanager
    def placement(self, wait: float = ANSWER_S) -> Iterator[Placing]:
        """One placement: the others, and this manager's reservation written, in one ledger transaction.

        Without cooperation the others are nobody; while the ledger cannot be
        used, they are what this manager last read of them that still runs
        (it works without the ledger, with a warning). A ledger kept
        locked for ``wait`` seconds by another process gives others marked
        ``busy``: nothing may be placed safely now.
        """
        ledger = self.membership.ensure_started()
        stack = ExitStack()
        placing = Placing(Others())
        if ledger is not None:
            try:
                transaction = stack.enter_context(ledger.placement(self.member, wait))
                placing = Placing(self._others_from(transaction.others(), transaction.waits(),
                                                    recreated=transaction.settling),
                                  partial(self._publish_in, transaction.publish),
                                  partial(self._write_in, transaction.record_wait),
                                  partial(self._write_in, transaction.forget_wait))
            except LedgerBusy as error:
                _abandon(stack, error)
                log.debug("placing without the ledger's lock is not safe: %s", error)
                placing = Placing(Others(busy=True))
            except LEDGER_FAILURES as error:
                _abandon(stack, error)
                self.membership.warn(error)
                placing = Placing(self._others_from(ledger.recalled(self.member), recreated=ledger.settling))
        done = False
        try:
            with stack:
                yield placing
                done = True
        except LEDGER_FAILURES as error:
            if not done:
                raise  # the caller's own error: the transaction was rolled back
            self.membership.warn(error)  # the commit failed: the others may not see this reservation

    def _publish_in(self, write: Callable[[MemberRow, Sequence[ModelRow], Sequence[CopyRow]], None]) -> None:
        if self.membership.join():
            self.membership.safely(lambda: write(*self.membership.rows()), None)

    def _write_in(self, write: Callable[[_T], None], value: _T) -> None:
        """``write(value)`` in a placement's transaction: a ledger that fails leaves this kernel alone, saying so."""
        self.membership.safely(partial(write, value), None)

    def others(self) -> Others:
        """What the other members hold and wait for now (a read, outside any placement)."""
        ledger = self.membership.ensure_started()
        if ledger is None:
            return Others()
        rows = self.membership.safely(partial(ledger.others, self.member), None, reading=True)
        return self._others_from(rows if rows is not None else ledger.recalled(self.member))

    def _others_from(self, rows: AllRows, waits: Sequence[WaitingRequest] = (), *, recreated: bool = False) -> Others:
        with self._state.lock:
            now = self._state.clock()
        found = others_from(rows, now, waits)
        return replace(found, recreated=True) if recreated else found

    def ask_to_evict(self, evictions: Sequence[Eviction], others: Others, priority: int,
                     timeout: float = ANSWER_S) -> Asked:
        """Ask each holder to evict its victims, waiting ``timeout`` s at most: who did not answer, what went.

        What a holder says it freed counts no more where it was only remembered (a ledger it cannot write):
        this member would otherwise wait, and ask again, for room that is free already.
        """
        asked = peers.ask_to_evict(evictions, others, priority, self.notebook, timeout)
        ledger = self.membership.ledger
        if ledger is not None:
            for member, keys in asked.freed.items():
                ledger.recollection.freed(member, keys)
        return asked

    def ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another member to unload one of its idle models (a click in the JupyterLab panel)."""
        others = self.others()
        if member not in others.addresses:
            raise ConfigurationError(f"no manager {member!r} on this machine (it may have stopped)")
        return peers.ask_to_unload(others, member, model_id, self.notebook)

    # -- the machine-wide queue ---------------------------------------------------------------------------

    def enqueue(self, model_id: str, needed: Mapping[str, int], priority: int, request: int) -> int | None:
        """Take a place in the machine-wide queue for a request that needs ``needed`` bytes per device.

        The manager joins first: the others read only members' requests, and must see this one to leave it its turn.
        ``request``: its id here (its row of what it waits for, if any, learns its place).
        """
        ledger = self.membership.ensure_started()
        if ledger is None or not self.membership.join():
            return None
        self.membership.safely(partial(ledger.publish_current, self.membership.rows), None)
        return self.membership.safely(partial(ledger.enqueue, self.member, model_id, needed, priority, request), None)

    def requeue(self, arrival: int, needed: Mapping[str, int]) -> None:
        """The queued request now needs other room (placed elsewhere, another context): the others see it."""
        ledger = self.membership.ledger
        if ledger is not None:
            self.membership.safely(partial(ledger.requeue, arrival, needed), None)

    def dequeue(self, arrival: int | None, request: int | None = None) -> None:
        """A request leaves the machine-wide queue (``arrival``) and says it waits no more (``request``, its id)."""
        ledger = self.membership.ledger
        if ledger is None:
            return
        try:
            if arrival is not None:
                ledger.dequeue(arrival)
            if request is not None:
                ledger.forget_wait(self.member, request)
        except Exception as error:  # noqa: BLE001 - a request that cannot be removed is dropped with its member
            log.debug("could not leave the machine-wide queue: %s", error)

    def machine(self, own: list[MachineModel]) -> MachineReport:
        """Every member and its models (this one's from ``own``, fresh), and GPU processes that are not members."""
        ledger = self.membership.ensure_started()
        if ledger is None:
            with self._state.lock:
                reason = self.membership.impossible or ("cooperate is off for this manager" if not
                                              self._state.settings.cooperate else "the manager is closed")
            return machine_report(self.membership.me, own, [], [], ledger="", reason=reason)
        members, rows, _ = self.membership.safely(partial(ledger.others, ""), ledger.recalled(""), reading=True)
        reason = ""
        if self.membership.failing:
            reason = f"the ledger cannot be read now ({self.membership.failing}); shown: the others as last read"
        elif not members and not self.membership.safely(ledger.exists, False, reading=True):
            reason = f"there is no ledger at {ledger.path} yet: no kernel has loaded a model with cooperation on"
        no_copies: list[CopyRow] = []
        copies = self.membership.safely(partial(ledger.copies, [m for m in members if m.member != self.member]),
                                        no_copies, reading=True)
        return machine_report(self.membership.me, own, members, rows, ledger=str(ledger.path), reason=reason,
                              copies=copies)


def _abandon(stack: ExitStack, error: BaseException) -> None:
    """Leave a placement that failed before it was used: its transaction is rolled back, never committed (a
    commit on a damaged file would raise a second, raw error)."""
    try:
        stack.__exit__(type(error), error, error.__traceback__)
    except LEDGER_FAILURES as late:
        if late is not error:
            log.debug("leaving a failed placement: %s", late)
