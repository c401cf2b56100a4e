"""The books balance: what a manager's status rows count on a device equals what its device line counts.

After every load and unload (and every eviction and failed load) of every
manager a test makes, the rows' bytes on each device (each instance once:
its counted bytes, plus memory an unloaded model still holds) must equal
the device line's ``held_bytes``. Rows of several devices are left out of
the per-device sums (their split is the backend's), remote models hold
nothing here, and a device with an instance no id reaches (replaced while
it loaded, freed a moment later) is looked at after that.
"""

from __future__ import annotations

import time
from typing import Any

__all__ = ["BooksCheck"]

_CHECKED = ("loaded", "evicted", "unloaded", "load_failed")


class BooksCheck:
    """Subscribes to managers and collects what did not balance; ``failures`` is asserted empty by the tests."""

    def __init__(self) -> None:
        self.failures: list[str] = []

    def watch(self, manager: Any) -> None:
        manager.subscribe(lambda event: self._check(manager, event) if event.kind in _CHECKED else None)

    def _check(self, manager: Any, event: Any) -> None:
        if event.kind == "loaded" and not _still_loaded(manager, event.model_id):
            return  # loaded for an id that was replaced or removed meanwhile: freed right after this event
        for _ in range(20):  # another thread may be half way through a change: a real mismatch stays
            problem = _imbalance(manager)
            if not problem:
                return
            time.sleep(0.01)
        self.failures.append(f"after {event}: {problem}")


def _still_loaded(manager: Any, model_id: str) -> bool:
    try:
        return manager.row(model_id).state == "loaded"
    except Exception:  # noqa: BLE001 - unregistered meanwhile
        return False


def _imbalance(manager: Any) -> str:
    try:
        rows, devices = manager.status(), manager.devices()
    except Exception:  # noqa: BLE001 - a closed manager, a probe failing in a fault test: nothing to check
        return ""
    counted: dict[str, int] = {}
    several: set[str] = set()
    seen: set[str] = set()
    for row in rows:
        if row.instance in seen:
            continue
        seen.add(row.instance)
        parts = row.device.split(",")
        if len(parts) > 1:
            several.update(parts)
            continue
        counted[parts[0]] = counted.get(parts[0], 0) + (row.counted_bytes or 0) + (row.held_bytes or 0)
    lines = {d.device: d.held_bytes for d in devices}
    named = {row.id for row in rows} | {f"{row.id} (held)" for row in rows}
    # an instance no id reaches any more (replaced while it loaded) is freed a moment later: not a row
    orphans = {d.device for d in devices if set(d.models) - named}
    wrong = [f"{device}: rows {counted.get(device, 0)} B, device line {lines[device]} B" for device in lines
             if device not in several | orphans and counted.get(device, 0) != lines[device]]
    return "; ".join(wrong)
