"""A garbage collection (``manager.collect_garbage()``) as one table: ``%llm gc``."""

from __future__ import annotations

from ...reports import GarbageReport
from ...support.referrers import HOLDER_HINT
from ...support.units import format_bytes
from .table import Table

__all__ = ["garbage_table"]


def garbage_table(report: GarbageReport) -> Table:
    """Per device: used before and after, freed; below, the unloaded models still alive and what holds them."""
    rows = [[device, format_bytes(report.used_before[device]), format_bytes(report.used_after.get(device)),
             format_bytes(report.freed_bytes.get(device, 0))] for device in report.used_before]
    notes = [f"{model_id!r} was unloaded but is still alive, held by {', '.join(holders) or 'an unknown reference'}."
             for model_id, holders in report.lingering.items()]
    notes.append(HOLDER_HINT if report.lingering else "No unloaded model is still alive.")
    return Table(["device", "used before", "used after", "freed"], rows,
                 caption=f"Garbage collected in {report.seconds:.2f} s", notes=notes)
