"""Admission policy: pure functions from a snapshot to a frozen plan.

No locks, threads, clocks, models or devices here: the caller describes what
is held (:class:`Snapshot`) and what is asked (:class:`Request`), and gets a
:class:`Plan` — admit (evicting these), wait (for these holders), or refuse
(why waiting cannot help). Executing plans is the manager's job; a test of
this module needs nothing but dataclasses.

The rules:

- Victims are loaded, idle, unpinned local instances, lowest priority first,
  then least recently used. A ``protected`` instance is never a victim for a
  request of lower priority; pinned instances never are.
- The count cap and each device budget are restored by one function,
  :func:`_choose`: first the count (reason ``lru``), then the bytes per
  device (reason ``budget``).
- Instances loading or unloading occupy their slot and bytes until they are
  gone; they are never victims (they make a request wait). One placement at a
  time per device: a request waits while a load or a free is in flight on
  one of its devices, so device figures never move under a decision.
- A request that cannot be placed now waits, unless waiting cannot help: it
  is too big even with every unpinned instance gone, or what blocks it is
  leased by the requesting thread itself or by threads that are waiting in
  the queue (a deadlock). Then it is refused at once, naming the holders.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from ...errors import DeviceShortfall, MemoryHolder
from ...events import EvictionReason
from .reasons import AdapterCapFull, AdapterCapReached, Cause, Limit, Reason, Refused, WaitingFor

__all__ = [
    "DeviceRoom",
    "Elsewhere",
    "Eviction",
    "Holding",
    "HoldingState",
    "Plan",
    "Request",
    "Snapshot",
    "admit",
    "apply",
    "enforce",
    "evict_everything_for",
    "expire",
    "room_on",
    "shortfalls",
    "yield_room",
]

HoldingState = Literal["loading", "loaded", "unloading"]
Verdict = Literal["admit", "wait", "refuse"]


@dataclass(frozen=True)
class Holding:
    """One instance as the policy sees it."""

    key: str
    name: str
    state: HoldingState = "loaded"
    bytes: Mapping[str, int] = field(default_factory=dict)
    leases: int = 0
    lease_threads: frozenset[int] = frozenset()
    pinned: bool = False
    priority: int = 0
    protected: bool = False
    last_used: float = 0.0
    remote: bool = False
    expires_at: float | None = None
    loader: int | None = None  # the thread loading it, while it loads
    owner: str | None = None  # another manager on this machine (a kernel) that holds it; None: this one
    where: str = ""  # that manager's notebook (or script, or pid), for messages
    base: str | None = None  # a LoRA adapter's slice: the key of the base instance it lives on (same owner)
    claim: bool = False  # the room a request of another kernel, ahead in the machine-wide queue, will take
    silent: bool = False  # another kernel's, which did not answer a request for room: counted as in use
    #: Memory of an unloaded model that did not come back: what holds its object (a variable). Held, never a
    #: victim, no slot of the count cap; it goes when the object is collected.
    held_by: str | None = None

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def ident(self) -> tuple[str | None, str]:
        """Who holds it and its key: two kernels may hold copies of the same instance key."""
        return self.owner, self.key

    def carries(self, other: Holding) -> bool:
        """Whether ``other`` is a LoRA adapter living on this (base) instance."""
        return other.base == self.key and other.owner == self.owner


@dataclass(frozen=True)
class DeviceRoom:
    """A device's budget for this manager now, and its total (for messages)."""

    device: str
    budget: int
    total: int


@dataclass(frozen=True)
class Snapshot:
    """Everything the policy may look at, at one moment."""

    holdings: tuple[Holding, ...] = ()
    devices: Mapping[str, DeviceRoom] = field(default_factory=dict)
    max_loaded: int | None = None
    now: float = 0.0
    waiting_threads: frozenset[int] = frozenset()
    limits_pending: bool = False  # a lowered limit could not be restored yet: enforced again after loads
    max_adapters: int | None = None  # LoRA adapters resident per base (max_loaded_adapters)
    #: Requests of other kernels ahead in the machine-wide queue, (model id, where), in arrival order: a
    #: request behind them takes no room they may need (first come, first served across kernels). The room
    #: they will take is in ``holdings`` as claims (held, never victims).
    ahead: tuple[tuple[str, str], ...] = ()

    def held(self, device: str) -> int:
        return sum(h.bytes.get(device, 0) for h in self.holdings)

    def local(self) -> list[Holding]:
        """Everything that holds memory on this machine's devices, this manager's and other kernels'."""
        return [h for h in self.holdings if not h.remote]

    def own(self) -> list[Holding]:
        """This manager's instances on the machine's devices: what its count cap counts."""
        return [h for h in self.holdings if not h.remote and h.owner is None]


@dataclass(frozen=True)
class Elsewhere:
    """The other kernels of this machine as one request sees them: what they hold, and who is ahead of it.

    ``holdings``: their instances (each names its owner) and the room the
    requests ahead will take (claims: held, never victims); ``ahead``: those
    requests, (model id, where), in arrival order: the first-come rule.
    """

    holdings: tuple[Holding, ...] = ()
    ahead: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Request:
    """A model that is not loaded and is asked for."""

    name: str
    key: str
    needed: Mapping[str, int] = field(default_factory=dict)
    priority: int = 0
    thread: int | None = None
    remote: bool = False
    base: str | None = None  # a LoRA adapter: the key of its (loaded) base instance


@dataclass(frozen=True)
class Eviction:
    """One instance to take out, and why; ``owner``: another kernel that holds it (it is asked to)."""

    key: str
    name: str
    reason: EvictionReason
    bytes: int
    owner: str | None = None

    @staticmethod
    def of(holding: Holding, reason: EvictionReason) -> Eviction:
        return Eviction(holding.key, holding.name, reason, holding.total_bytes, holding.owner)


@dataclass(frozen=True)
class Plan:
    """What to do: ``admit`` (after ``evictions``), ``wait`` or ``refuse``, and why."""

    verdict: Verdict
    evictions: tuple[Eviction, ...] = ()
    blockers: tuple[MemoryHolder, ...] = ()
    shortfalls: tuple[DeviceShortfall, ...] = ()
    why: Reason | None = None

    @property
    def admitted(self) -> bool:
        return self.verdict == "admit"

    @property
    def reason(self) -> str:
        """Why it waits or is refused, in words (empty when admitted)."""
        return self.why.text() if self.why is not None else ""


# -- choosing victims: written once --------------------------------------------------------

def _order(candidates: Iterable[Holding], *, protected_last: bool = False) -> list[Holding]:
    """Lowest priority first, then least recently used (protected ones last when asked)."""
    return sorted(candidates, key=lambda h: (protected_last and h.protected, h.priority, h.last_used))


def _choose(candidates: Sequence[Holding], excess: int,
            deficits: Mapping[str, int]) -> tuple[list[Eviction], int, dict[str, int]]:
    """Victims in candidate order for ``excess`` slots, then for each device's byte deficit.

    Returns the victims, the slots still missing and the bytes still missing per device.
    """
    victims: dict[tuple[str | None, str], Eviction] = {}
    # another kernel's model frees none of this one's slots; adapters hold no slot of the count cap
    slots = [h for h in candidates if h.owner is None and h.base is None and h.held_by is None]
    for holding in slots[:max(excess, 0)]:
        _take(victims, holding, "lru", candidates)
    missing_slots = max(excess - len(slots), 0)
    missing: dict[str, int] = {}
    for device, deficit in deficits.items():
        deficit -= sum(h.bytes.get(device, 0) for h in candidates if h.ident in victims)
        for holding in candidates:
            if deficit <= 0:
                break
            if holding.ident not in victims and holding.bytes.get(device):
                deficit -= sum(h.bytes.get(device, 0) for h in _take(victims, holding, "budget", candidates))
        if deficit > 0:
            missing[device] = deficit
    return list(victims.values()), missing_slots, missing


def _take(victims: dict[tuple[str | None, str], Eviction], holding: Holding, reason: EvictionReason,
          candidates: Sequence[Holding]) -> list[Holding]:
    """``holding`` into ``victims``, its adapters first (evicting a base evicts them); returns those added."""
    added = [h for h in candidates if holding.carries(h) and h.ident not in victims] + [holding]
    for taken in added:
        victims[taken.ident] = Eviction.of(taken, reason)
    return added


def _idle(holding: Holding) -> bool:
    return holding.state == "loaded" and not holding.leases and not holding.remote and not holding.pinned


def _may_evict_for(holding: Holding, request: Request) -> bool:
    """Whether ``holding`` may go to make room for ``request``: idle, not protected above it, and not the base
    a LoRA adapter request goes onto (a load leases it meanwhile; a plan that loads the base first must keep it too)."""
    if request.base is not None and holding.owner is None and holding.key == request.base:
        return False
    return _idle(holding) and not (holding.protected and holding.priority > request.priority)


def _excess(snapshot: Snapshot, adding: int) -> int:
    if snapshot.max_loaded is None:
        return 0
    return len([h for h in snapshot.own() if h.base is None and h.held_by is None]) + adding - snapshot.max_loaded


def _deficits(snapshot: Snapshot, needed: Mapping[str, int]) -> dict[str, int]:
    deficits = {}
    for device, need in needed.items():
        room = snapshot.devices.get(device)
        budget = room.budget if room is not None else 0
        deficits[device] = need - (budget - snapshot.held(device))
    return deficits


# -- admission ------------------------------------------------------------------------------

def admit(snapshot: Snapshot, request: Request) -> Plan:
    """Place ``request`` now (with evictions), or say why it must wait or cannot be placed."""
    if request.remote:
        return Plan("admit")
    crowded = _crowded(snapshot, request)  # max_loaded_adapters: the base's least recently used adapters go first
    if isinstance(crowded, Plan):
        return crowded
    if crowded:
        plan = admit(replace(snapshot, holdings=tuple(h for h in snapshot.holdings if h not in crowded)), request)
        lru = tuple(Eviction.of(h, "lru") for h in crowded)
        return replace(plan, evictions=lru + plan.evictions) if plan.admitted else plan
    excess, deficits = _excess(snapshot, 0 if request.base else 1), _deficits(snapshot, request.needed)
    candidates = _order(h for h in snapshot.holdings if _may_evict_for(h, request))
    victims, missing_slots, missing = _choose(candidates, excess, deficits)
    if not missing_slots and not missing and not _busy_on(snapshot, request):
        return Plan("admit", tuple(victims))
    return _cannot_place_now(snapshot, request, excess, deficits)


def _crowded(snapshot: Snapshot, request: Request) -> list[Holding] | Plan:
    """A LoRA adapter's request on a base at ``max_adapters``: the base's adapters to evict, or why it cannot.

    Its least recently used idle adapters make way; while the others are in
    use the request waits, unless they are pinned or held by the requesting
    thread (or threads that wait themselves): then it is refused.
    """
    if request.base is None or snapshot.max_adapters is None:
        return []
    siblings = [h for h in snapshot.own() if h.base == request.base]
    excess = len(siblings) + 1 - snapshot.max_adapters
    idle = _order(h for h in siblings if _may_evict_for(h, request))
    if excess <= len(idle):
        return idle[:max(excess, 0)]
    stuck = snapshot.waiting_threads | ({request.thread} if request.thread is not None else set())
    held = [h for h in siblings if h not in idle]
    blockers = tuple(_holder(h, "pinned" if h.pinned else _why_blocking(h, request)) for h in held)
    if all(h.pinned or _stuck(h, stuck) for h in held):
        return Plan("refuse", blockers=blockers, why=AdapterCapFull(request.name, snapshot.max_adapters, blockers))
    return Plan("wait", blockers=blockers, why=AdapterCapReached(snapshot.max_adapters, blockers))


def _busy_on(snapshot: Snapshot, request: Request) -> list[Holding]:
    """Holdings loading or being freed on one of the request's devices."""
    return [h for h in snapshot.local() if h.state != "loaded" and set(h.bytes) & set(request.needed)]


def _cannot_place_now(snapshot: Snapshot, request: Request, excess: int, deficits: Mapping[str, int]) -> Plan:
    """Wait, unless waiting cannot help (too big, pinned, or a deadlock): then refuse."""
    unpinned = _order(h for h in snapshot.local() if not h.pinned)
    pinned = [h for h in snapshot.local() if h.pinned]
    _, missing_slots, missing = _choose(unpinned, excess, deficits)
    if missing_slots or missing:
        cause = Cause.PINNED if pinned else Cause.TOO_BIG
        return _refusal(snapshot, request, missing_slots, missing, [(h, "pinned") for h in pinned], cause)
    stuck = snapshot.waiting_threads | ({request.thread} if request.thread is not None else set())
    _, missing_slots, missing = _choose([h for h in unpinned if not _stuck(h, stuck)], excess, deficits)
    if missing_slots or missing:
        held = [h for h in unpinned if _stuck(h, stuck)]
        own = [h for h in held if request.thread in h.lease_threads or h.loader == request.thread]
        holders = [(h, "pinned") for h in pinned] + [
            (h, "in use by this thread" if h in own else "in use by a thread that waits too") for h in held]
        cause = Cause.OWN_LEASES if own and len(own) == len(held) else Cause.WAITERS_HOLD
        return _refusal(snapshot, request, missing_slots, missing, holders, cause)
    busy = _busy_on(snapshot, request)
    if any(_stuck(h, stuck) for h in busy):
        holders = [(h, "loading in this thread") for h in busy if _stuck(h, stuck)]
        return _refusal(snapshot, request, 0, {}, holders, Cause.OWN_LOAD)
    blockers = tuple(_holder(h, _why_blocking(h, request)) for h in snapshot.local()
                     if (not _may_evict_for(h, request) and not h.pinned) or h in busy)
    return Plan("wait", blockers=blockers, why=WaitingFor(blockers))


def _refusal(snapshot: Snapshot, request: Request, missing_slots: int, missing: Mapping[str, int],
             holders: Sequence[tuple[Holding, str]], cause: Cause) -> Plan:
    """A refusal naming the limit that is reached, what holds it, and why waiting cannot help."""
    blockers = tuple(_holder(h, why) for h, why in holders)
    limit = Limit.COUNT if missing_slots else (Limit.MEMORY if missing else Limit.NONE)
    return Plan("refuse", blockers=blockers, shortfalls=_shortfalls(snapshot, request, missing),
                why=Refused(request.name, limit, cause, blockers, snapshot.max_loaded))


def _stuck(holding: Holding, threads: frozenset[int] | set[int]) -> bool:
    """Held by a thread that cannot let go while the request waits (it is the requester, or waits too)."""
    return bool(holding.lease_threads & threads) or holding.loader in threads


def _why_blocking(holding: Holding, request: Request) -> str:
    if holding.state != "loaded":
        return holding.state
    if holding.leases:
        return "in use"
    return "protected" if holding.protected and holding.priority > request.priority else "busy"


def _holder(holding: Holding, why: str) -> MemoryHolder:
    if holding.silent:  # idle, maybe: its kernel did not answer when asked to make room
        return MemoryHolder(holding.name, holding.total_bytes, f"in {holding.where}, which did not answer")
    if holding.held_by is not None:
        where = f" in {holding.where}" if holding.owner else ""
        return MemoryHolder(holding.name, holding.total_bytes,
                            f"unloaded but still held by {holding.held_by}{where} ({_fix(holding.held_by, where)})")
    return MemoryHolder(holding.name, holding.total_bytes, why + (f" in {holding.where}" if holding.owner else ""))


def _fix(held_by: str, where: str) -> str:
    """What frees a held model: ``del m, box`` for the variables named, else deleting the reference."""
    names = list(dict.fromkeys(re.findall(r"variable '([A-Za-z_][A-Za-z0-9_]*)'", held_by)))
    if names:
        return f"run `del {', '.join(names)}`{where} to free it"
    return "`del` that variable there to free it" if where else "delete that reference to free it"


def shortfalls(snapshot: Snapshot, request: Request) -> tuple[DeviceShortfall, ...]:
    """Per device of the request: what it needs, what could be made free, and who holds the rest."""
    return _shortfalls(snapshot, request, request.needed)


def _shortfalls(snapshot: Snapshot, request: Request, missing: Mapping[str, int]) -> tuple[DeviceShortfall, ...]:
    found = []
    for device in missing:
        room = snapshot.devices.get(device) or DeviceRoom(device, 0, 0)
        need = request.needed.get(device, 0)
        evictable = sum(h.bytes.get(device, 0) for h in snapshot.holdings if _may_evict_for(h, request))
        holders = tuple(_holder(h, "pinned" if h.pinned else _why_blocking(h, request))
                        for h in snapshot.local() if h.bytes.get(device) and not _may_evict_for(h, request))
        available = max(room.budget - snapshot.held(device) + evictable, 0)
        found.append(DeviceShortfall(device, need, available, room.budget, room.total, holders))
    return tuple(found)


# -- restoring limits, keep-alive, out-of-memory retry ------------------------------------------

def enforce(snapshot: Snapshot, *, spare: str | None = None) -> Plan:
    """Evictions that bring the count cap and every device budget back within limits.

    After a lowered limit, or a load heavier than its estimate (``spare`` is
    that instance). Protected instances go last. ``wait`` means not
    everything could be restored now (leases, pins, loads in flight).
    """
    candidates = _order((h for h in snapshot.own() if _idle(h) and h.key != spare), protected_last=True)
    crowded, short = _over_adapter_cap(snapshot, candidates)
    candidates = [h for h in candidates if h not in crowded]
    # other kernels' models are theirs to restore; adapters over their base's cap go first
    snapshot = replace(snapshot, holdings=tuple(h for h in snapshot.own() if h not in crowded))
    deficits = {device: snapshot.held(device) - room.budget for device, room in snapshot.devices.items()}
    victims, missing_slots, missing = _choose(candidates, _excess(snapshot, 0), deficits)
    victims = [Eviction.of(h, "lru") for h in crowded] + victims
    return Plan("wait" if missing_slots or missing or short else "admit", tuple(victims))


def _over_adapter_cap(snapshot: Snapshot, candidates: Sequence[Holding]) -> tuple[list[Holding], bool]:
    """Each base's least recently used idle adapters beyond ``max_adapters``; whether some could not go now."""
    crowded: list[Holding] = []
    short = False
    if snapshot.max_adapters is None:
        return crowded, short
    for base in {h.base for h in snapshot.own() if h.base is not None}:
        excess = sum(1 for h in snapshot.own() if h.base == base) - snapshot.max_adapters
        idle = [h for h in candidates if h.base == base]
        crowded += idle[:max(excess, 0)]
        short = short or excess > len(idle)
    return crowded, short


def expire(snapshot: Snapshot) -> Plan:
    """Idle, unpinned instances whose keep-alive has run out (protected ones included)."""
    due = [h for h in snapshot.own()
           if _idle(h) and h.expires_at is not None and h.expires_at <= snapshot.now]
    return Plan("admit", tuple(Eviction.of(h, "keep_alive") for h in _order(due)))


def evict_everything_for(snapshot: Snapshot, request: Request) -> Plan:
    """After an out-of-memory error: every instance that may make way, on the request's devices."""
    victims = [Eviction.of(h, "budget") for h in _order(snapshot.own())
               if _may_evict_for(h, request) and set(h.bytes) & set(request.needed)]
    return Plan("admit" if victims else "refuse", tuple(victims))


def yield_room(snapshot: Snapshot, keys: Sequence[str], priority: int) -> Plan:
    """The holder's answer when another kernel asks it to evict ``keys`` for a request of ``priority``.

    The same rule as for its own requests: those of its instances that are
    loaded, idle and unpinned now go (a protected one only for an equal or
    higher priority); the others stay.
    """
    asking = Request("", "", priority=priority)
    return Plan("admit", tuple(Eviction.of(h, "other_kernel") for h in snapshot.own()
                               if h.key in keys and _may_evict_for(h, asking)))


# -- helpers for placement and for simulating plans ------------------------------------------

def room_on(snapshot: Snapshot, device: str, request: Request) -> int:
    """Bytes that could be made free on ``device`` for ``request``, evictions included."""
    room = snapshot.devices.get(device)
    if room is None:
        return 0
    evictable = sum(h.bytes.get(device, 0) for h in snapshot.holdings if _may_evict_for(h, request))
    return room.budget - snapshot.held(device) + evictable


def apply(snapshot: Snapshot, plan: Plan, request: Request) -> Snapshot:
    """The snapshot after ``plan`` was executed for ``request`` (victims gone, the request loaded)."""
    gone = {(eviction.owner, eviction.key) for eviction in plan.evictions}
    holdings = [h for h in snapshot.holdings if h.ident not in gone]
    if plan.admitted:
        holdings.append(Holding(request.key, request.name, "loaded", dict(request.needed), priority=request.priority,
                                last_used=snapshot.now, remote=request.remote, base=request.base))
    return replace(snapshot, holdings=tuple(holdings))
