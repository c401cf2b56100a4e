"""Why a request waits or is refused: small values, and the one place they are put into words.

The policy returns a reason with every plan that does not admit (and
admission adds the few it knows itself: the local queue); messages, status
rows, ``plan()`` reports and exceptions all say it through :meth:`Reason.text`
(the sentence of an exception or a waiting message) or :meth:`Reason.short`
(the clause of a ``plan()`` row), so the dry run and the action say the same.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...errors import MemoryHolder
from ...support.units import format_bytes

__all__ = [
    "AdapterCapFull",
    "AdapterCapReached",
    "AskedForRoom",
    "BeingPlaced",
    "Cause",
    "Leaving",
    "LedgerLocked",
    "LedgerRecreated",
    "Limit",
    "NotPlaceable",
    "OverModelCap",
    "QueuedBehind",
    "QueuedLocally",
    "Reason",
    "Refused",
    "WaitingFor",
]

_WAITING = "waiting for capacity: "


class Reason:
    """Why a request waits or is refused; frozen, comparable, put into words here only."""

    def text(self) -> str:
        raise NotImplementedError

    def short(self) -> str:
        """The clause of a ``plan()`` row: ``would wait for ...`` or ``cannot load ...``."""
        return self.text().split(";")[0].replace("Cannot load", "cannot load")

    def __str__(self) -> str:
        return self.text()


@dataclass(frozen=True)
class OverModelCap(Reason):
    """It needs more than ``max_memory_per_model``."""

    name: str
    needed: int
    cap: int

    def text(self) -> str:
        return (f"Cannot load {self.name!r}: it needs {format_bytes(self.needed)} but max_memory_per_model is "
                f"{format_bytes(self.cap)}.")


@dataclass(frozen=True)
class NotPlaceable(Reason):
    """No device it asks for can be used here (no GPU, not visible, no support): waiting would not make one appear."""

    message: str

    def text(self) -> str:
        return self.message


class Limit(enum.Enum):
    """Which limit a refusal names."""

    COUNT = "count"  # max_loaded_models
    MEMORY = "memory"  # a device budget
    NONE = "none"  # no limit: what blocks it cannot end


class Cause(enum.Enum):
    """Why waiting cannot help."""

    PINNED = "only pinned models are in the way, so waiting cannot help"
    TOO_BIG = "waiting cannot help"
    OWN_LEASES = ("this thread holds them, so waiting would never end: leave the `with manager.use(...)` block "
                  "(or finish the generation) first")
    WAITERS_HOLD = "they are held by threads that are themselves waiting for room, so waiting would never end"
    OWN_LOAD = "that load cannot end while this thread waits"
    EACH_OTHER = ("each waits for the other, so waiting would never end: leave the `with manager.use(...)` block "
                  "(or finish the generation) first")

    @property
    def remedy(self) -> str:
        """What the user can do about it, for a ``plan()``'s advice ("" where the memory hint says it)."""
        if self in (Cause.OWN_LEASES, Cause.EACH_OTHER):
            return "Leave the `with manager.use(...)` block (or let the generation finish) first, then load it."
        if self is Cause.PINNED:
            return "Unpin a model (manager.unpin(...)) or raise the limit that is reached."
        return ""

    @property
    def brief(self) -> str:
        """The cause in a few words, for a ``plan()`` row ("" when the limit says it all)."""
        return {Cause.PINNED: "only pinned models are in the way", Cause.TOO_BIG: "",
                Cause.OWN_LEASES: "this thread holds them", Cause.WAITERS_HOLD: "threads that wait themselves hold them",
                Cause.OWN_LOAD: "this thread loads it",
                Cause.EACH_OTHER: "kernels that wait for this thread hold them"}[self]


@dataclass(frozen=True)
class Refused(Reason):
    """A limit is reached and waiting cannot help, naming what holds it."""

    name: str
    limit: Limit
    cause: Cause
    holders: tuple[MemoryHolder, ...] = ()
    max_loaded: int | None = None

    def text(self) -> str:
        named = f"; held by {', '.join(map(str, self.holders))}" if self.holders else ""
        if self.limit is Limit.COUNT:
            return (f"Cannot load {self.name!r}: max_loaded_models={self.max_loaded} is reached{named}; "
                    f"{self.cause.value}.")
        if self.limit is Limit.NONE:
            return f"Cannot load {self.name!r} now{named}; {self.cause.value}."
        # the shortfalls, appended to the exception's message, say per device what holds the memory
        return (f"Cannot load {self.name!r}: not enough memory, even after evicting every model that may be "
                f"evicted; {self.cause.value}:")

    def short(self) -> str:
        named = f" (held by {', '.join(map(str, self.holders))})" if self.holders else ""
        limit = {Limit.COUNT: f": max_loaded_models={self.max_loaded} is reached", Limit.NONE: " now",
                 Limit.MEMORY: ": not enough memory"}[self.limit]
        brief = self.cause.brief
        return f"cannot load {self.name!r}{limit}{named}" + (f": {brief}" if brief else "")


@dataclass(frozen=True)
class AdapterCapFull(Reason):
    """``max_loaded_adapters`` adapters are on its base and none may make way."""

    name: str
    cap: int
    holders: tuple[MemoryHolder, ...]

    def text(self) -> str:
        named = ", ".join(map(str, self.holders))
        return (f"Cannot load {self.name!r}: max_loaded_adapters={self.cap} adapters are on its base already and "
                f"none may make way ({named}), so waiting cannot help.")


@dataclass(frozen=True)
class AdapterCapReached(Reason):
    """``max_loaded_adapters`` adapters are on its base, some in use: it waits for one to make way."""

    cap: int
    holders: tuple[MemoryHolder, ...]

    def text(self) -> str:
        named = ", ".join(map(str, self.holders))
        return f"{_WAITING}max_loaded_adapters={self.cap} reached on its base ({named})"

    def short(self) -> str:
        return _would_wait(self.text())


@dataclass(frozen=True)
class WaitingFor(Reason):
    """Models in use, loading or leaving hold the room: it waits for them."""

    blockers: tuple[MemoryHolder, ...]

    def text(self) -> str:
        if not self.blockers:
            return _WAITING + "another request is being placed"
        groups: dict[str, list[str]] = {}
        for holder in self.blockers:
            groups.setdefault(holder.why, []).append(holder.model_id)
        return _WAITING + ", ".join(f"{', '.join(names)} {why}" for why, names in groups.items())

    def short(self) -> str:
        return _would_wait(self.text())


@dataclass(frozen=True)
class Leaving(Reason):
    """Its own instance is still leaving (unloading): it waits until it is gone."""

    name: str
    state: str

    def text(self) -> str:
        return f"{_WAITING}{self.name} {self.state}"

    def short(self) -> str:
        return _would_wait(self.text())


@dataclass(frozen=True)
class QueuedBehind(Reason):
    """Requests of other kernels came first in the machine-wide queue (first come, first served)."""

    requests: tuple[tuple[str, str], ...]  # (model id, where: its notebook, script or pid), in arrival order

    def text(self) -> str:
        shown = ", ".join(f"{model_id} in {where}" for model_id, where in self.requests[:3])
        more = len(self.requests) - 3
        return "queued behind " + shown + (" in the machine-wide queue" if more <= 0 else f" and {more} more")

    def short(self) -> str:
        return "would wait: " + self.text()


@dataclass(frozen=True)
class QueuedLocally(Reason):
    """Other models of this manager are placed first (its fair queue)."""

    names: tuple[str, ...]

    def text(self) -> str:
        return "queued behind " + ", ".join(map(repr, self.names))

    def short(self) -> str:
        return "would wait: " + self.text()


@dataclass(frozen=True)
class LedgerLocked(Reason):
    """Another process keeps the machine's ledger locked (a stopped kernel?): placing now could over-commit."""

    def text(self) -> str:
        return "the machine's ledger is locked by another process (a stopped kernel?)"

    def short(self) -> str:
        return "would wait: " + self.text()


@dataclass(frozen=True)
class LedgerRecreated(LedgerLocked):
    """The ledger was recreated and another kernel may not have written what it holds there yet: placing now
    could over-commit too."""

    def text(self) -> str:
        return ("the machine's ledger was lost and recreated; waiting a few seconds for the other kernels to "
                "write what they hold in it again")


@dataclass(frozen=True)
class AskedForRoom(Reason):
    """Other kernels were asked for room and answered, but that room is not free yet."""

    where: tuple[str, ...]

    def text(self) -> str:
        return f"{_WAITING}room {', '.join(self.where)} was asked to free (it answered; the room is not free yet)"


@dataclass(frozen=True)
class BeingPlaced(Reason):
    """It is next, and its plan is being made."""

    def text(self) -> str:
        return "being placed"


def _would_wait(text: str) -> str:
    return text.replace(_WAITING, "would wait for ")
