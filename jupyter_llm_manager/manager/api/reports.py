"""The reports part of the manager's API: status rows, plans, estimates, devices, the machine, events."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from ...events import Event
from ...reports import DeviceReport, GarbageReport, MachineReport, MemoryEstimate, PlanReport, StatusRow

if TYPE_CHECKING:
    from ..wiring import Parts

__all__ = ["ReportCalls"]


class ReportCalls:
    """What the manager can tell without changing anything (``ask_to_unload`` asks another manager)."""

    _parts: Parts

    def plan(self, model_ids: Sequence[str] | None = None) -> PlanReport:
        """Would these models fit together? A dry run of admission (default: the tasks' selected options)."""
        return self._parts.planner.plan(self._parts.planner.wanted() if model_ids is None else list(model_ids))

    def collect_garbage(self) -> GarbageReport:
        """Collect garbage and empty device caches without unloading; report what is still alive."""
        return self._parts.freeing.collect_garbage()

    def lingering(self) -> dict[str, tuple[str, ...]]:
        """Unloaded models whose objects are still alive, and what holds each."""
        return self._parts.freeing.lingering()

    def estimate(self, model_id: str, *, refresh: bool = False) -> MemoryEstimate:
        """Memory the model would take, from metadata only (no weights are read)."""
        spec = self._parts.registration.spec(model_id)
        return self._parts.estimates.get(spec, self._parts.backends(spec.backend), refresh=refresh)

    def status(self) -> list[StatusRow]:
        """One row per registered model id: state, device, memory, use, keep-alive."""
        return self._parts.status.rows()

    def row(self, model_id: str) -> StatusRow:
        """The status row of one id (aliases resolve to their model's row)."""
        return self._parts.status.row(model_id)

    def machine(self) -> MachineReport:
        """Every manager of this user on this machine (kernels, scripts), the models each holds, and other GPU users."""
        return self._parts.cooperation.machine(self._parts.status.machine_models(self._parts.cooperation.pid,
                                                                     self._parts.cooperation.notebook))

    def ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another manager of this machine (``machine()``'s member id) to unload an idle model; what it said."""
        return self._parts.cooperation.ask_to_unload(member, model_id)

    def devices(self) -> list[DeviceReport]:
        """Per device: total, free, this manager's budget, and the bytes its models hold."""
        return self._parts.status.devices()

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` on every manager event (no lock held); returns the unsubscribe function."""
        return self._parts.bus.subscribe(callback)

    def events(self, limit: int | None = 50) -> list[Event]:
        """The most recent events, oldest first."""
        return self._parts.bus.recent(limit)

