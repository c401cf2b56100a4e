"""The ledger's rows: a member (one manager), one of its instances on one device, one waiting request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["MemberRow", "ModelRow", "RequestRow", "member_row", "model_row", "request_row"]


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
