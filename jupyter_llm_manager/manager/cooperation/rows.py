"""The ledger's rows: a member (one manager), one of its instances on one device, a copy it lends, one waiting
request."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["CopyRow", "MemberRow", "ModelRow", "RequestRow", "copy_row", "member_row", "model_row", "request_row"]


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
class CopyRow:
    """One instance a member lends to the others: the key it is asked by (``ModelSpec.share_key``), the context
    it was loaded with (tokens; 0 where the backend allocates none at load, -1 while a default one is not sized
    yet) and who borrows it now."""

    member: str
    key: str
    share: str
    context: int
    borrowers: dict[str, int]


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


def copy_row(r: Sequence) -> CopyRow | None:
    """A copy as written; ``None`` for a row that says nothing sensible (it lends nothing)."""
    member, key, share, context, borrowers = r
    if not all(isinstance(text, str) and text for text in (member, key, share)):
        return None
    if not isinstance(context, int) or isinstance(context, bool) or not -1 <= context < 2**40:
        return None
    return CopyRow(member, key, share, context, _counts(borrowers))


def _counts(text: object) -> dict[str, int]:
    """Who borrows a copy, as written: at most 20 names, each bounded."""
    return {name[:200]: count for name, count in list(_json_counts(text, 2**31).items())[:20]}


def request_row(r: Sequence) -> RequestRow:
    return RequestRow(r[0], r[1], r[2], _needed(r[3]), r[4], r[5])


def _needed(text: object) -> dict[str, int]:
    """A request's bytes per device, as written; a row that says nothing sensible claims nothing."""
    return _json_counts(text, 2**62)


def _json_counts(text: object, below: int) -> dict[str, int]:
    """A JSON object of positive whole numbers under ``below``, as written; what is not one is left out."""
    try:
        found = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(name): int(count) for name, count in found.items()
            if isinstance(count, int) and not isinstance(count, bool) and 0 < count < below}
