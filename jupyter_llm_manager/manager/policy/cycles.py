"""Waits across kernels: which waiting requests wait for which, and a wait that would never end.

A request that waits for models other kernels use says so in the ledger
(:class:`WaitingRequest`): the models its thread leases (they stay while it
waits) and the other kernels' models in use it cannot be placed without
(:func:`needs_gone`). From those rows a request learns which requests wait,
directly or through others, for its own thread's leases (:func:`waiting_on`):
they cannot be placed before it, so it never queues behind them; and whether
the models those requests lease keep it out for good (:func:`deadlock`): then
each waits for the other, and it is refused at once, as the same cycle inside
one kernel is. Only models in use make such a wait: an idle one is evicted
when asked.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from .fit import Holding, Request, Snapshot

__all__ = ["WaitingRequest", "deadlock", "needs_gone", "waiting_on"]

#: A model of one kernel: (its member id in the ledger, its instance key).
HeldBy = tuple[str, str]


@dataclass(frozen=True)
class WaitingRequest:
    """A request of one kernel that waits for models other kernels use, as its row in the ledger says."""

    member: str
    request: int  # its id in its kernel
    model_id: str
    holds: frozenset[str]  # instance keys its thread leases: they stay while it waits
    needs: frozenset[HeldBy]  # other kernels' models in use it cannot be placed without
    arrival: int | None = None  # its place in the machine-wide queue, once it has one


def needs_gone(snapshot: Snapshot, request: Request) -> frozenset[HeldBy]:
    """Other kernels' models in use that keep ``request`` out on their own.

    Each is one the request would not fit beside even if every model but the
    pinned ones and its own thread's leases went: it must go first.
    """
    kept = _kept(snapshot, request)

    def keeps_out(holding: Holding) -> bool:
        return not _fits(snapshot, request, lambda other: other is holding or kept(other))

    return frozenset((h.owner, h.key) for h in snapshot.local()
                     if h.owner is not None and h.leases and not h.claim and not h.pinned and keeps_out(h))


def waiting_on(waits: Iterable[WaitingRequest], member: str, keys: Iterable[str]) -> list[WaitingRequest]:
    """The requests that cannot be placed before ``member`` lets go of ``keys``.

    Those that need one of those models gone, then those that need one of the
    models the first ones' threads lease, and so on.
    """
    held = {(member, key) for key in keys}
    found: list[WaitingRequest] = []
    while True:
        more = [w for w in waits if w not in found and w.needs & held]
        if not more:
            return found
        found += more
        held |= {(w.member, key) for w in more for key in w.holds}


def deadlock(snapshot: Snapshot, request: Request, behind: Sequence[WaitingRequest], me: str) -> tuple[Holding, ...]:
    """Other kernels' models in use that keep ``request`` out for good (none when it may still be placed).

    ``behind``: the requests that wait for this request's thread to let go
    (:func:`waiting_on`), ``me`` the member the request is in. The models
    their threads lease stay as long as this request waits; when the request
    does not fit beside them (with its own thread's leases and the pinned
    models), even if everything else went, waiting would never end.
    """
    stuck = {(w.member, key) for w in behind for key in w.holds}

    def held_behind(holding: Holding) -> bool:
        return (holding.owner or me, holding.key) in stuck and not holding.claim

    kept = _kept(snapshot, request)
    if _fits(snapshot, request, lambda h: held_behind(h) or kept(h)):
        return ()
    return tuple(h for h in snapshot.local()
                 if h.owner is not None and held_behind(h) and set(h.bytes) & set(request.needed))


def _kept(snapshot: Snapshot, request: Request) -> Callable[[Holding], bool]:
    """What stays whatever happens while ``request`` waits: pinned models and its own thread's leases."""
    def kept(holding: Holding) -> bool:
        return holding.pinned or (request.thread is not None and (
            request.thread in holding.lease_threads or holding.loader == request.thread))

    return kept


def _fits(snapshot: Snapshot, request: Request, kept: Callable[[Holding], bool]) -> bool:
    """Whether ``request`` fits once every holding but the ``kept`` ones is gone.

    A device whose figures are unknown now (a load in flight there) says
    nothing: it never makes a request look stuck.
    """
    for device, need in request.needed.items():
        room = snapshot.devices.get(device)
        if room is not None and need > room.budget - sum(h.bytes.get(device, 0) for h in snapshot.holdings
                                                         if kept(h)):
            return False
    return True
