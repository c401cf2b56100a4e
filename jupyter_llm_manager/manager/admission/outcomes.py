"""What one look at a request decides: its small outcomes, passed between the parts of admission."""

from __future__ import annotations

import enum
from dataclasses import dataclass

from ...errors import ResourceNotAvailableError
from ..cooperation import Others
from ..instances import Instance
from ..policy import fit as policy
from ..policy.cycles import WaitingRequest
from ..unloading.evictions import Victims
from .queue import Waiter

__all__ = ["Admitted", "Again", "AskOthers", "Load", "NeedsBase", "Queued", "Refuse", "Wait"]


class Again(enum.Enum):
    LOOK = "the state changed while a plan was prepared: look at it again"


@dataclass(frozen=True)
class Load:
    """This thread owns a new instance: load it now."""

    canonical: str
    instance: Instance


@dataclass(frozen=True)
class Queued:
    waiter: Waiter
    may_plan: bool
    version: int  # of the state when this was decided: a change after it wakes the waiter


@dataclass(frozen=True)
class Admitted:
    instance: Instance
    victims: Victims


@dataclass(frozen=True)
class Wait:
    plan: policy.Plan | None
    version: int
    waiting: WaitingRequest | None = None  # what it waits for in other kernels' leases, for the ledger


@dataclass(frozen=True)
class Refuse:
    """Refused once the placement's transaction ends (the ledger then says it waits no more)."""

    error: ResourceNotAvailableError


@dataclass(frozen=True)
class AskOthers:
    """The decision evicts other kernels' models: ask them, then look again."""

    evictions: tuple[policy.Eviction, ...]
    others: Others
    priority: int


@dataclass(frozen=True)
class NeedsBase:
    """A LoRA adapter that shares its base: lease the base first (``base_id``), then the adapter on it."""

    base_id: str
