"""The whole machine at a glance: every manager (kernel) of this user, the models each holds, other GPU users."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..support.units import bytes_text, format_duration

__all__ = ["GpuProcess", "KernelRow", "MachineModel", "MachineReport", "borrower_names"]


@dataclass(frozen=True)
class GpuProcess:
    """A process holding memory on a GPU, as the driver reports it (NVML)."""

    pid: int
    name: str
    device: str
    bytes: int

    bytes_str = bytes_text("bytes")


@dataclass(frozen=True)
class KernelRow:
    """One manager on this machine: a kernel, a script or an IPython terminal."""

    pid: int
    notebook: str  # the notebook's path, the script, or ``pid N``
    kernel: str  # the Jupyter kernel id, where there is one
    member: str
    this: bool  # the manager that made the report
    models: int
    bytes: int

    bytes_str = bytes_text("bytes")


@dataclass(frozen=True)
class MachineModel:
    """One loaded model of one manager, on one device."""

    pid: int
    notebook: str
    model_id: str
    device: str
    bytes: int
    state: str
    pinned: bool
    in_use: int
    last_used: float  # wall clock
    this: bool
    member: str = ""  # the owning manager's ledger id: what ``manager.ask_to_unload(member, model_id)`` takes
    borrowers: tuple[str, ...] = ()  # who is answered from this copy now (other notebooks, "pid N", serve)
    share: str = ""  # the key other members borrow this copy by ("" when it is not lent)

    bytes_str = bytes_text("bytes")

    @property
    def borrowers_str(self) -> str:
        """``lent to B.ipynb, C.ipynb`` ("" when nobody borrows it)."""
        return f"lent to {', '.join(self.borrowers)}" if self.borrowers else ""

    def last_used_str(self, now: float | None = None) -> str:
        return f"{format_duration((now or time.time()) - self.last_used)} ago" if self.last_used else ""


@dataclass(frozen=True)
class MachineReport:
    """``manager.machine()``: who holds what on this machine, like ``nvidia-smi`` by model and notebook."""

    kernels: tuple[KernelRow, ...]
    models: tuple[MachineModel, ...]
    others: tuple[GpuProcess, ...]  # processes with GPU memory that are not managers: shown, never asked
    cooperating: bool
    ledger: str
    #: Why this manager does not cooperate ("" when it does): turned off, or not possible here (no Unix sockets);
    #: where it does, why the ledger was not read: there is none yet, or it cannot be used now.
    reason: str = ""

    def held(self, device: str) -> int:
        return sum(model.bytes for model in self.models if model.device == device)


def borrower_names(borrowers: Mapping[str, int]) -> tuple[str, ...]:
    """Who borrows a copy, as shown: ``B.ipynb``, or ``B.ipynb ×2`` for two requests at once."""
    return tuple(f"{name} ×{count}" if count > 1 else name for name, count in sorted(borrowers.items()) if count > 0)
