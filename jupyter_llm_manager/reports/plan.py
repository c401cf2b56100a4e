"""``plan()``'s answer to "will these fit together?": per model and per device, computed without loading anything."""

from __future__ import annotations

from dataclasses import dataclass

from ..support.units import bytes_text

__all__ = ["PlanDevice", "PlanModel", "PlanReport"]


@dataclass(frozen=True)
class PlanModel:
    """One model of a plan: where it would go, its estimate, and how that was obtained."""

    id: str
    device: str
    estimated_bytes: int
    how: str
    state: str  # "loaded" (it stays), "admitted", "evicted" (by a later one), "waits", "refused", "unknown", "unavailable"
    note: str = ""

    estimated_str = bytes_text("estimated_bytes")


@dataclass(frozen=True)
class PlanDevice:
    """One device of a plan: its budget, what is held now, what the plan adds and evicts."""

    device: str
    budget_bytes: int
    held_bytes: int
    added_bytes: int
    evictions: tuple[tuple[str, str, int], ...]  # (model id, reason, bytes)
    after_bytes: int
    #: Room that requests of other kernels ahead in the machine-wide queue will take (not in ``held_bytes``).
    claimed_bytes: int = 0

    budget_str = bytes_text("budget_bytes")
    claimed_str = bytes_text("claimed_bytes")
    held_str = bytes_text("held_bytes")
    added_str = bytes_text("added_bytes")
    after_str = bytes_text("after_bytes")


@dataclass(frozen=True)
class PlanReport:
    """The answer to "will these fit together?", computed without loading anything."""

    models: tuple[PlanModel, ...]
    devices: tuple[PlanDevice, ...]
    fits: bool
    verdict: str
    advice: str = ""

    @property
    def evictions(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(model_id for device in self.devices for model_id, _, _ in device.evictions))

    def __str__(self) -> str:
        lines = [self.verdict]
        lines += [f"  {m.id}: {m.estimated_str} on {m.device} ({m.state}; {m.how})" + (f" — {m.note}" if m.note else "")
                  for m in self.models]
        lines += [f"  {d.device}: budget {d.budget_str}, held {d.held_str}"
                  + (f", claimed by requests ahead {d.claimed_str}" if d.claimed_bytes else "") + f", adds {d.added_str}"
                  + (f", evicts {', '.join(f'{i} ({r})' for i, r, _ in d.evictions)}" if d.evictions else "")
                  for d in self.devices]
        return "\n".join(lines + ([self.advice] if self.advice else []))
