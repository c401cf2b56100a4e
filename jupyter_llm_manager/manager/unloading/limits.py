"""Limits kept as the state changes: settings applied at once, and the evictions and reaper wake-ups that follow.

The other parts call these hooks, with no lock held, when something happened
that may let a deferred eviction go ahead (a lease ended, a pin was lifted, a
load turned out heavier than its estimate) or that changes what the keep-alive
:class:`~.keep_alive.Reaper` must watch (settings, a new load).
"""

from __future__ import annotations

from typing import Any

from ...events import EventBus
from ..instances import Instance
from ..state import ManagerState
from .evictions import Evictions
from .keep_alive import Reaper

__all__ = ["Limits"]


class Limits:
    """Settings changes, and the evictions and reaper wake-ups that follow changes."""

    def __init__(self, state: ManagerState, bus: EventBus, evictions: Evictions) -> None:
        self._state = state
        self._bus = bus
        self._evictions = evictions
        self.reaper = Reaper(evictions)

    def configure(self, values: dict[str, Any]) -> None:
        """Apply validated settings at once, tell subscribers, and restore the (maybe lowered) limits."""
        state = self._state
        with state.lock:
            state.settings = state.settings.with_values(values)
            state.touch()
        self._bus.emit("settings_changed", message=", ".join(f"{k} = {v}" for k, v in values.items()))
        self.reaper.wake()
        self.ensure_reaper()
        self._evictions.enforce()

    def after_idle(self, instance: Instance) -> None:
        """An instance's last lease ended: its keep-alive starts; deferred limits may apply now."""
        self.reaper.wake()
        if instance.key in self._state.retiring:
            self.retire(instance.key)
        if self._state.limits_pending:
            self._evictions.enforce()

    def retire(self, key: str | None) -> None:
        """Unload a task's previous option now if idle, else when its last lease ends (see ``after_idle``)."""
        if key is None:
            return
        state = self._state
        with state.lock:
            instance = state.instances.get(key)
            if instance is None:
                state.retiring.discard(key)
                return
            if instance.leases or instance.state != "loaded" or key not in state.retiring:
                return  # in use (or loading): its last lease ends it
            state.retiring.discard(key)
        self._evictions.unload(key, state.deadline(0), quiet=True)

    def after_load(self, instance: Instance, heavier: bool) -> None:
        self.ensure_reaper()
        if heavier or self._state.limits_pending:
            self._evictions.enforce(spare=instance.key)

    def after_unpin(self, pending: bool) -> None:
        if pending:
            self._evictions.enforce()

    def ensure_reaper(self) -> None:
        """Start the keep-alive thread once some keep-alive is set."""
        state = self._state
        with state.lock:
            wanted = not state.closed and (state.settings.keep_alive is not None or any(
                s.keep_alive is not None for s in state.registry.specs.values()))
        if wanted:
            self.reaper.start()
