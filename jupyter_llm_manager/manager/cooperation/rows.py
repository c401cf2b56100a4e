"""The ledger's rows: a member (one manager), one of its instances on one device, a copy it lends, one waiting
request.

Rows are checked as they are read (:func:`member_row`, :func:`model_row`,
:func:`request_row`): any process of the user may write the file, so a
field of the wrong type or out of range makes the row a :class:`BadRow`,
and names are made safe to show (no control character or escape sequence,
one line, bounded length). A request that waits for other kernels' models in
use also has a row of its own (:class:`~..policy.cycles.WaitingRequest`, read
by :func:`wait_row`).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from ...support.names import shown_name
from ..policy.cycles import WaitingRequest

__all__ = ["BadRow", "CopyRow", "MemberRow", "ModelRow", "RequestRow", "WaitingRequest", "copy_row", "member_row",
           "model_row", "request_row", "wait_row"]

#: The states an instance is published in; a row in another state is a bad row (ignored, with a warning).
STATES = ("loading", "loaded", "unloading", "held")
#: The longest id (a member's, a key) a row may carry.
_ID_LIMIT = 200
#: The longest socket address (a path).
_ADDRESS_LIMIT = 4096


class BadRow(ValueError):
    """A ledger row with a field of the wrong type or out of range: it is ignored."""


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


def _integer(value: object, low: int, high: int, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise BadRow(f"{field} is {str(value)[:40]!r}, not a whole number from {low} to {high}")
    return value


def _time(value: object, field: str) -> float:
    """A wall-clock time (seconds since 1970), as a finite number that is not negative."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise BadRow(f"{field} is {str(value)[:40]!r}, not a time")
    return float(value)


def _id(value: object, field: str, limit: int = _ID_LIMIT) -> str:
    """An id compared with others (a member's, a key, an address): text as written, bounded."""
    if not isinstance(value, str) or not value or len(value) > limit:
        raise BadRow(f"{field} is not a text of 1 to {limit} characters")
    return value


def _name(value: object, field: str) -> str:
    """A name people read (a notebook's, a model's): made safe to show."""
    if not isinstance(value, str):
        raise BadRow(f"{field} is not a text")
    return shown_name(value)


def _address(value: object) -> str:
    """Where a member listens (a socket's path), or "" where it does not."""
    return _id(value, "address", _ADDRESS_LIMIT) if value != "" else ""


def _row(r: Sequence, width: int, table: str) -> Sequence:
    if len(r) != width:
        raise BadRow(f"a {table} row has {len(r)} fields, not {width}")
    return r


def member_row(r: Sequence) -> MemberRow:
    """A member row as read; :class:`BadRow` when a field is wrong."""
    r = _row(r, 7, "members")
    return MemberRow(_id(r[0], "member"), _integer(r[1], 1, 2**31 - 1, "pid"), _time(r[2], "started"),
                     _name(r[3], "kernel"), _name(r[4], "notebook"), _address(r[5]), _time(r[6], "seen"))


def model_row(r: Sequence) -> ModelRow:
    """A model row as read; :class:`BadRow` when a field is wrong."""
    r = _row(r, 11, "models")
    state = _id(r[5], "state", 40)
    if state not in STATES:
        raise BadRow(f"state {state!r} is none of {', '.join(STATES)}")
    return ModelRow(_id(r[0], "member"), _id(r[1], "key", 4096), _name(r[2], "model id"), _name(r[3], "device"),
                    _integer(r[4], 0, 2**62, "bytes"), state,
                    bool(_integer(r[6], 0, 1, "pinned")), _integer(r[7], 0, 2**31, "leases"), _time(r[8], "last used"),
                    _integer(r[9], -(2**31), 2**31, "priority"), bool(_integer(r[10], 0, 1, "protected")))


def copy_row(r: Sequence) -> CopyRow | None:
    """A copy as read; ``None`` for a row that says nothing sensible (it lends nothing)."""
    try:
        r = _row(r, 5, "copies")
        return CopyRow(_id(r[0], "member"), _id(r[1], "key", 4096), _id(r[2], "share", 4096),
                       _integer(r[3], -1, 2**40, "context"), _counts(r[4]))
    except BadRow:
        return None


def _counts(text: object) -> dict[str, int]:
    """Who borrows a copy, as written: at most 20 names, made safe to show."""
    return {shown_name(name)[:200]: count for name, count in list(_json_counts(text, 2**31).items())[:20]}


def request_row(r: Sequence) -> RequestRow:
    """A waiting request as read; :class:`BadRow` when a field is wrong."""
    r = _row(r, 6, "requests")
    return RequestRow(_integer(r[0], 1, 2**62, "arrival"), _id(r[1], "member"), _name(r[2], "model id"),
                      _needed(r[3]), _integer(r[4], -(2**31), 2**31, "priority"), _time(r[5], "since"))


def _needed(text: object) -> dict[str, int]:
    """A request's bytes per device, as written; a row that says nothing sensible claims nothing."""
    return _json_counts(text, 2**62)


def _json_counts(text: object, below: int) -> dict[str, int]:
    """A JSON object of positive whole numbers under ``below``, as written; what is not one is left out."""
    try:
        found = json.loads(text) if isinstance(text, str) and len(text) < 4096 else {}
    except (ValueError, RecursionError):
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(name): int(count) for name, count in found.items()
            if isinstance(count, int) and not isinstance(count, bool) and 0 < count < below}


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


#: The longest JSON text a waits row may hold (its keys: a few hundred bytes each); longer is nonsense.
_JSON_LIMIT = 64 * 1024


def _json(text: object) -> object:
    """A row's JSON text read, ``None`` where it is not JSON, too long or nested too deep (never raises)."""
    try:
        return json.loads(text) if isinstance(text, str) and len(text) <= _JSON_LIMIT else None
    except (ValueError, RecursionError):
        return None
