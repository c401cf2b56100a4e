"""A plan (``manager.plan()``) as tables: ``%llm plan``, the CLI's ``plan`` and the dashboard's "Plan ticked"."""

from __future__ import annotations

from collections.abc import Mapping

from ...reports import PlanReport
from .table import Column, Table

__all__ = ["plan_tables", "task_table"]


def plan_tables(report: PlanReport) -> list[Table]:
    """The models (estimate, device, how it was estimated, what would happen), then the devices, with the verdict."""
    notes = [report.advice] if report.advice else []
    models = Table([Column("model"), Column("device", 2), Column("estimate"), Column("how estimated", 1),
                    Column("plan")],
                   [[m.id, m.device, m.estimated_str if m.state not in ("unknown", "unavailable") else "?", m.how,
                     {"loaded": "loaded now: stays"}.get(m.state, m.state) + (f": {m.note}" if m.note else "")]
                    for m in report.models],
                   caption=report.verdict, notes=[] if report.devices else notes)
    if not report.devices:
        return [models]
    devices = Table([Column("device"), Column("budget"), Column("held now", 1), Column("adds", 1), Column("evicts"),
                     Column("after")],
                    [[d.device, d.budget_str, d.held_str + (f" (+{d.claimed_str} claimed by requests ahead)"
                                                           if d.claimed_bytes else ""), d.added_str,
                      ", ".join(f"{i} ({r})" for i, r, _ in d.evictions) or "-", d.after_str] for d in report.devices],
                    caption="Devices", notes=notes)
    return [models, devices]


def task_table(name: str, selected: str, options: Mapping[str, Mapping[str, object]]) -> Table:
    """A task's options, the selected one marked, with what describes each."""
    rows = []
    for option, values in options.items():
        described = ", ".join(f"{k}: {v}" for k, v in values.items() if k not in ("model_id", "api_key"))
        rows.append([("▶ " if option == selected else "  ") + option, str(values.get("model_id", "")), described])
    return Table(["option", "model_id", "details"], rows, caption=f"Task {name}: {selected} selected",
                 notes=[f"%llm select {name} OPTION chooses another"])
