"""The whole machine (``manager.machine()``) as tables: ``%llm status --all``, ``jupyter-llm-manager ps``, the
dashboard's "This machine" and the JupyterLab panel's other notebooks."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...reports import MachineModel, MachineReport
from ...support.names import NotebookName, notebook_names
from ...support.units import format_bytes
from ..machine_reader import MachineView
from .style import MUTED, WRAP, text
from .table import Cell, Column, Table

__all__ = ["machine_html", "machine_json", "machine_tables", "models_table"]

MODEL_COLUMNS = (Column("device"), Column("model"), Column("notebook"), Column("memory"), Column("state"),
                 Column("pinned", 1), Column("in use", 1), Column("last use", 2), Column("lent to", 2))


def _notebook(name: NotebookName) -> Cell:
    return Cell(name.shown, title=name.full if name.full != name.shown else "")


def models_table(models: Sequence[MachineModel], now: float | None = None, caption: str = "", *,
                 root: str | None = None, names: Mapping[str, NotebookName] | None = None) -> Table:
    """One row per model a manager of this machine holds; its data is what the panel acts on.

    Notebooks by short names (:func:`~jupyter_llm_manager.support.names.notebook_names`, relative to the
    server's ``root`` where known), the full path on hover.
    """
    names = names or notebook_names([m.notebook for m in models], root=root)
    cells = [[m.device, m.model_id, _notebook(names[m.notebook]), m.bytes_str, m.state, "yes" if m.pinned else "",
              str(m.in_use or ""), m.last_used_str(now), ", ".join(m.borrowers)] for m in models]
    data = [{"member": m.member, "pid": m.pid, "notebook": names[m.notebook].shown,
             "path": names[m.notebook].full, "model": m.model_id, "device": m.device,
             "bytes": m.bytes, "memory": m.bytes_str, "state": m.state, "in_use": m.in_use, "pinned": m.pinned,
             "last_used": m.last_used or None, "borrowers": list(m.borrowers),
             "unloadable": m.state == "loaded" and not m.in_use and not m.pinned} for m in models]
    return Table(MODEL_COLUMNS, cells, caption, data=data)


def machine_tables(report: MachineReport, *, include_this: bool = True, root: str | None = None) -> list[Table]:
    """Kernels, then their models by device (most recently used first), then GPU users that are not managers.

    ``include_this=False`` leaves out the reporting manager (a terminal's ``ps`` is not a kernel); ``root``:
    the Jupyter server's, where known (notebooks are named relative to it).
    """
    kernels = [k for k in report.kernels if include_this or not k.this]
    models = sorted((m for m in report.models if include_this or not m.this),
                    key=lambda m: (m.device, -m.last_used))
    names = notebook_names([k.notebook for k in kernels] + [m.notebook for m in models], root=root)
    rows = [[Cell(names[k.notebook].shown + (" (this one)" if k.this else ""), title=_notebook(names[k.notebook]).title),
             str(k.pid), k.kernel[:8] or "-", str(k.models), k.bytes_str] for k in kernels]
    tables = [Table([Column("notebook"), Column("pid", 1), Column("kernel", 2), Column("models"), Column("holds")],
                    rows, caption=_caption(report, len(kernels))),
              models_table(models, caption="Models on this machine" if models else
                           "No model is loaded on this machine", names=names)]
    if report.others:
        tables.append(Table([Column("device"), Column("pid"), Column("process"), Column("memory")],
                            [[p.device, str(p.pid), p.name, p.bytes_str] for p in report.others],
                            caption="Other processes on the GPUs (not managers: shown, never asked)"))
    return tables


def _caption(report: MachineReport, count: int) -> str:
    if not report.cooperating:
        return "Cooperation is off (cooperate=False): only this kernel is shown"
    if report.reason:
        return report.reason[0].upper() + report.reason[1:]
    if count == 0:
        return f"No notebook on this machine holds a model (a kernel joins the ledger {report.ledger} when it loads one)"
    if count == 1:
        return f"1 manager on this machine uses {report.ledger}"
    return f"{count} managers on this machine share {report.ledger}"


def machine_html(view: MachineView, now: float | None = None, root: str | None = None) -> str:
    """The dashboard's "This machine" section: the other notebooks' models per device, or why there are none."""
    title = "<b>This machine</b>"
    if view.problem:
        return f"<div>{title} <div style='{MUTED}; {WRAP}'>{text(view.problem)}</div></div>"
    if not view.cooperating:
        return (f"<div>{title} <span style='{MUTED}'>cooperation is off (cooperate=False): other notebooks are "
                "not shown</span></div>")
    if not view.models:
        return f"<div>{title} <span style='{MUTED}'>no other notebook holds a model</span></div>"
    notebooks = len({(m.pid, m.notebook) for m in view.models})
    caption = f"{title} <span style='{MUTED}'>other notebooks' models ({notebooks} notebook" \
              f"{'' if notebooks == 1 else 's'}, {format_bytes(sum(m.bytes for m in view.models))})</span>"
    return f"<div>{caption}<div style='font-size:smaller'>{models_table(view.models, now, root=root).html()}</div></div>"


def machine_json(view: MachineView, root: str | None = None) -> dict[str, Any]:
    """What the JupyterLab panel shows of the machine: the other notebooks' models as a table's rows (JSON).

    Without relative times (the panel counts them itself), so it changes only when the models do.
    """
    table = models_table(view.models, root=root).select(*(c.name for c in MODEL_COLUMNS if c.name != "last use"))
    return {"cooperating": view.cooperating, "problem": view.problem, "models": table.json()["rows"]}
