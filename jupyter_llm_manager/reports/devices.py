"""A device as the manager sees it: the system's figures, the budget and what the manager's models hold."""

from __future__ import annotations

from dataclasses import dataclass

from ..support.units import bytes_text

__all__ = ["DeviceReport"]


@dataclass(frozen=True)
class DeviceReport:
    """A device as the manager sees it: system figures, budget and what its models hold."""

    device: str
    name: str
    total_bytes: int
    free_bytes: int
    budget_bytes: int
    held_bytes: int
    models: tuple[str, ...]
    source: str

    @property
    def used_bytes(self) -> int:
        return self.total_bytes - self.free_bytes

    total_str = bytes_text("total_bytes")
    free_str = bytes_text("free_bytes")
    budget_str = bytes_text("budget_bytes")
    held_str = bytes_text("held_bytes")
    used_str = bytes_text("used_bytes")
