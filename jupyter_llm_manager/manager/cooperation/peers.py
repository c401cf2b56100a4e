"""The other members: what they hold and wait for (read from the ledger), and asking them to make room.

Their instances reach the policy as holdings that name their owner (a member
id) in a field; the room that requests ahead in the machine-wide queue will
take reaches it as claims (held, never victims), with the first-come list
(:class:`~..policy.fit.Elsewhere`), but for the requests that wait for the
asker's own leases (they cannot be placed before it). A request to evict or unload reaches the
holder's listener thread, which answers with the same policy as its own
requests; a holder that does not answer within :data:`ANSWER_S` is named.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from ...support.names import message_name
from ..policy.cycles import WaitingRequest
from ..policy.fit import Elsewhere, Eviction, Holding
from .listener import ask
from .rows import MemberRow, ModelRow, RequestRow

__all__ = ["ANSWER_S", "Asked", "EvictedElsewhere", "Others", "ask_to_evict", "ask_to_unload", "others_from"]

#: How long another manager has to answer a request (it answers from a thread of its own).
ANSWER_S = 2.0


@dataclass(frozen=True)
class Others:
    """What the other members hold and wait for, read at one moment, on this manager's clock."""

    holdings: tuple[Holding, ...] = ()
    requests: tuple[RequestRow, ...] = ()
    names: dict[str, str] = field(default_factory=dict)  # member -> notebook (or script, or pid)
    addresses: dict[str, str] = field(default_factory=dict)
    pids: dict[str, int] = field(default_factory=dict)
    busy: bool = False  # the ledger stayed locked by another process: nothing can be placed safely now
    #: The ledger was recreated and another member may not have written the new one yet: nothing can be placed
    #: safely until it has (see ``LedgerFile.settling``).
    recreated: bool = False
    #: Requests waiting for models in use, with what their threads lease (every member's, this one's too).
    waits: tuple[WaitingRequest, ...] = ()

    def earlier(self, arrival: int | None, behind: frozenset[int] = frozenset()) -> list[RequestRow]:
        """Other members' requests that came before ``arrival`` (all of them when this one is not queued yet),
        but for those with an arrival in ``behind``."""
        return [r for r in self.requests if (arrival is None or r.arrival < arrival) and r.arrival not in behind]

    def seen_by(self, arrival: int | None, unanswered: frozenset[str] = frozenset(),
                behind: frozenset[int] = frozenset()) -> Elsewhere:
        """The machine as the request with ``arrival`` (``None``: not queued, a plan) sees it.

        Models of members in ``unanswered`` (they did not answer a request
        for room) count as in use. Requests with an arrival in ``behind`` wait
        for this request's thread to let go of its leases: they are not ahead of it.
        """
        ahead = self.earlier(arrival, behind)
        claims = tuple(Holding(f"waiting-{r.arrival}", r.model_id, "loaded", dict(r.needed), leases=1,
                               priority=r.priority, owner=r.member, where=self.names.get(r.member, r.member),
                               claim=True)
                       for r in ahead if r.needed)
        holdings = tuple(replace(h, leases=h.leases + 1, silent=True) if h.owner in unanswered else h
                         for h in self.holdings)
        return Elsewhere(holdings + claims, tuple((r.model_id, self.names.get(r.member, r.member)) for r in ahead))

    def named(self, member: str) -> str:
        """``analysis.ipynb (pid 123)``: a member as a message names it."""
        pid = self.pids.get(member)
        return f"{self.names.get(member, member)}" + (f" (pid {pid})" if pid is not None else "")


def others_from(rows: tuple[list[MemberRow], list[ModelRow], list[RequestRow]], now: float,
                waits: Sequence[WaitingRequest] = ()) -> Others:
    """The other members' rows as holdings on this manager's clock (``now``: its monotonic time).

    ``waits``: the rows of requests waiting for models in use (read only by a placement).
    """
    member_rows, model_rows, request_rows = rows
    members = {m.member: m for m in member_rows}
    wall = time.time()
    grouped: dict[tuple[str, str], list[ModelRow]] = {}
    for row in model_rows:
        grouped.setdefault((row.member, row.key), []).append(row)
    holdings = []
    for (member, key), parts in grouped.items():
        first = parts[0]
        held = first.state == "held"  # an unloaded model a variable still holds there: counted, never a victim
        state = "loaded" if held else (first.state if first.state in ("loading", "loaded") else "unloading")
        holdings.append(Holding(key, first.model_id, state, {r.device: r.bytes for r in parts},  # type: ignore[arg-type]
                                max(first.leases, 1) if held else first.leases, frozenset(), first.pinned,
                                first.priority, first.protected, now - (wall - first.last_used), owner=member,
                                where=message_name(members[member].notebook),
                                held_by="a variable" if held else None))
    return Others(tuple(holdings), tuple(request_rows), {m: message_name(row.notebook) for m, row in members.items()},
                  {m: row.address for m, row in members.items()}, {m: row.pid for m, row in members.items()},
                  waits=tuple(waits))


@dataclass(frozen=True)
class EvictedElsewhere:
    """A model another member evicted when asked: its id there, where (its notebook), what came back."""

    model_id: str
    where: str
    freed_bytes: int
    held_bytes: int = 0  # what did not come back there (a variable holds the model): still counted


@dataclass(frozen=True)
class Asked:
    """The answers to a request for room: the members that did not answer, and what the others evicted."""

    silent: frozenset[str] = frozenset()
    evicted: tuple[EvictedElsewhere, ...] = ()
    #: The keys each member that answered says it freed entirely (nothing held there by a variable).
    freed: dict[str, tuple[str, ...]] = field(default_factory=dict)


def ask_to_evict(evictions: Sequence[Eviction], others: Others, priority: int, requester: str,
                 timeout: float = ANSWER_S) -> Asked:
    """Ask each holder to evict its victims (in parallel, ``timeout`` s each): who did not answer, what went."""
    by_member: dict[str, list[str]] = {}
    for eviction in evictions:
        if eviction.owner is not None:
            by_member.setdefault(eviction.owner, []).append(eviction.key)
    request = {"op": "evict", "priority": priority, "requester": requester}

    def one(member: str) -> tuple[str, dict | None]:
        return member, ask(others.addresses.get(member, ""), {**request, "keys": by_member[member]}, timeout)

    with ThreadPoolExecutor(max(len(by_member), 1), thread_name_prefix="llm-manager-ask") as pool:
        answers = list(pool.map(one, by_member))
    return Asked(frozenset(member for member, answer in answers if answer is None),
                 tuple(gone for member, answer in answers if answer is not None
                       for gone in _evicted_in(answer, others.names.get(member, member))),
                 {member: _freed_in(answer) for member, answer in answers if answer is not None})


def _freed_in(answer: dict) -> tuple[str, ...]:
    """The keys an answer says were evicted with nothing held back (``freed`` and ``evicted`` name the same
    models, in order); none where the answer is not what this version sends."""
    keys, listed = answer.get("freed"), answer.get("evicted")
    if not isinstance(keys, list) or not isinstance(listed, list) or len(keys) != len(listed):
        return ()
    return tuple(key for key, entry in zip(keys[:64], listed[:64], strict=False)
                 if isinstance(key, str) and isinstance(entry, dict) and entry.get("held") == 0)


def _evicted_in(answer: dict, where: str) -> list[EvictedElsewhere]:
    """What an answer says was evicted (members that predate the list say nothing; odd entries are skipped)."""
    listed = answer.get("evicted")
    found = []
    for entry in listed[:64] if isinstance(listed, list) else ():
        model, freed, held = (entry.get(k) for k in ("model", "freed", "held")) if isinstance(entry, dict) \
            else (None, None, None)
        if isinstance(model, str) and isinstance(freed, int) and freed >= 0:
            found.append(EvictedElsewhere(model[:200], where, freed, held if isinstance(held, int) and held > 0 else 0))
    return found


def ask_to_unload(others: Others, member: str, model_id: str, requester: str) -> str:
    """Ask another member to unload one of its idle models (a click in the JupyterLab panel); what it said."""
    answer = ask(others.addresses[member], {"op": "unload", "model": model_id, "requester": requester}, ANSWER_S)
    if answer is None:
        return f"{others.names.get(member, member)} did not answer within {ANSWER_S:g} s"
    return str(answer.get("message") or answer.get("error") or "")
