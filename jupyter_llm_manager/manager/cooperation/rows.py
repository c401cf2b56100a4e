"""The ledger's rows: a member (one manager), one of its instances on one device, one waiting request.

A request that waits for other kernels' models in use also has a row of its
own (:class:`~..policy.cycles.WaitingRequest`, read by :func:`wait_row`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from ..policy.cycles import WaitingRequest

__all__ = ["MemberRow", "ModelRow", "RequestRow", "WaitingRequest", "member_row", "model_row", "request_row",
           "wait_row"]


@dataclass(frozen=True)
class MemberRow:
    """One manager: its process, its kernel and notebook, where its listener is."""

    member: str
    pid: int
    started: float
    kernel: str
    notebook: str
    address: str
    seen: float


@dataclass(frozen=True)
class ModelRow:
    """One loaded (or loading) instance of a member, on one device."""

    member: str
    key: str
    model_id: str
    device: str
    bytes: int
    state: str
    pinned: bool
    leases: int
    last_used: float  # wall clock
    priority: int
    protected: bool


@dataclass(frozen=True)
class RequestRow:
    """A request waiting for capacity, in the machine-wide queue (first come, first served).

    ``needed`` is what it will take per device: later requests count it as
    taken, so room freed for this one is never taken by them first.
    """

    arrival: int
    member: str
    model_id: str
    needed: dict[str, int]
    priority: int
    since: float


def member_row(r: Sequence) -> MemberRow:
    return MemberRow(*r)


def model_row(r: Sequence) -> ModelRow:
    return ModelRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], bool(r[10]))


def request_row(r: Sequence) -> RequestRow:
    return RequestRow(r[0], r[1], r[2], _needed(r[3]), r[4], r[5])


def _needed(text: object) -> dict[str, int]:
    """A request's bytes per device, as written; a row that says nothing sensible claims nothing."""
    try:
        found = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(device): int(size) for device, size in found.items()
            if isinstance(size, int) and not isinstance(size, bool) and 0 < size < 2**62}


def wait_row(r: Sequence) -> WaitingRequest | None:
    """A waiting request's row (member, request, arrival, model_id, holds, needs); ``None`` when it makes no sense."""
    member, request, arrival, model_id, holds, needs = r[:6]
    found_holds, found_needs = _json(holds), _json(needs)
    if not (isinstance(member, str) and isinstance(request, int) and isinstance(found_holds, list)
            and isinstance(found_needs, list)):
        return None
    return WaitingRequest(member, request, str(model_id), frozenset(k for k in found_holds if isinstance(k, str)),
                          frozenset((m, k) for m, k in (p for p in found_needs if isinstance(p, list) and len(p) == 2)
                                    if isinstance(m, str) and isinstance(k, str)),
                          arrival if isinstance(arrival, int) else None)


def _json(text: object) -> object:
    try:
        return json.loads(text) if isinstance(text, str) else None
    except ValueError:
        return None
