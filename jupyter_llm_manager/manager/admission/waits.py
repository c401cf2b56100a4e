"""Waiting for room: the waiting event with the queue position, the machine-wide queue, giving up at the deadline.

A request that must wait says why and where it stands (a ``waiting`` event
when that changes), takes its place in the machine-wide queue when what it
waits for is in other kernels (and looks again every moment: their changes
wake nobody here), and gives up at its deadline naming what it waited for
and the kernels that did not answer.
"""

from __future__ import annotations

from ...errors import ResourceNotAvailableError
from ...events import EventBus
from ...support.deadlines import Deadline
from ..cooperation import Cooperation
from ..cooperation.membership import POLL_S
from ..policy.reasons import BeingPlaced, QueuedLocally
from ..state import ManagerState
from .outcomes import Wait
from .queue import Waiter

__all__ = ["Waits"]


class Waits:
    """The waits of one manager's requests (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, cooperation: Cooperation) -> None:
        self._state = state
        self._bus = bus
        self._cooperation = cooperation

    def wait(self, waiter: Waiter, outcome: Wait, deadline: Deadline, told: str) -> str:
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
            raise self.gave_up(waiter, deadline, reason)
        self.queue_on_machine(waiter)
        message = f"{reason} (queue position {position})"
        if message != told:
            self._bus.emit("waiting", waiter.name, message=reason, position=position, arrival=waiter.order)
        state = self._state
        with state.lock:  # what other kernels do wakes nobody here: look again every moment
            remaining = deadline.remaining()
            poll = state.deadline(min(POLL_S, remaining if remaining is not None else POLL_S)) if waiter.polls else None
            state.wait_for_change(version, poll or deadline, waiter.wake)
        return message

    def queue_on_machine(self, waiter: Waiter) -> None:
        """A request waiting on other kernels takes its place in the machine's queue, saying what it needs."""
        if waiter.ledger is not None:
            if waiter.needed != waiter.published:
                self._cooperation.requeue(waiter.ledger, waiter.needed)
                waiter.published = waiter.needed
        elif waiter.polls:
            with self._state.lock:
                priority = self._state.registry.priority(waiter.key)
            waiter.ledger = self._cooperation.enqueue(waiter.name, waiter.needed, priority, waiter.order)
            waiter.published = waiter.needed

    def gave_up(self, waiter: Waiter, deadline: Deadline, reason: str) -> ResourceNotAvailableError:
        waited = "without waiting" if deadline.seconds == 0 else f"after waiting {deadline.seconds:g} s"
        if waiter.unanswered_names:
            reason += (f"; {', '.join(waiter.unanswered_names)} did not answer when asked to "
                       "make room")
        return ResourceNotAvailableError(
            f"Cannot load {waiter.name!r} {waited}: {reason}.", model_id=waiter.name,
            hint="Pass wait= a longer time (math.inf: no limit) or raise wait_timeout, or unload a model.")

