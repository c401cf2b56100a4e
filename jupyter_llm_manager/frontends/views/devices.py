"""The devices (``manager.devices()``) as one table: ``%llm status``, the dashboard's bars, the JupyterLab panel."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...reports import DeviceReport
from ...support.units import format_bytes
from .status import SIZES
from .style import MUTED, WARNING, WRAP, text
from .table import Column, Table

__all__ = ["device_html", "devices_table"]

_HELD, _NOTEBOOKS, _OTHERS = "#3b82f6", "#f59e0b", "#a3a3a3"
COLUMNS = (Column("device"), Column("name", 2), Column("total"), Column("used", 1), Column("free"),
           Column("budget"), Column("held by models"), Column("models", 3), Column("other notebooks", 1))


def devices_table(devices: Sequence[DeviceReport], others_on: Callable[[str], int] = lambda device: 0) -> Table:
    """One row per device; ``others_on(device)``: bytes the other notebooks' models hold there (the ledger)."""
    cells = [[d.device, d.name, d.total_str, d.used_str, d.free_str, d.budget_str, d.held_str, ", ".join(d.models),
              format_bytes(others_on(d.device)) if others_on(d.device) else ""] for d in devices]
    data = [{"device": d.device, "name": d.name, "total": d.total_str, "free": d.free_str, "budget": d.budget_str,
             "held": d.held_str, "notebooks": format_bytes(others_on(d.device)) if others_on(d.device) else ""}
            for d in devices]
    return Table(COLUMNS, cells, "Devices", data=data)


def _coarse(value: int) -> str:
    """System-wide used bytes, rounded so that its constant small changes do not re-render the dashboard."""
    if value >= 10**9:
        return format_bytes(round(value / 10**8) * 10**8)
    return format_bytes(round(value / 10**7) * 10**7)


def device_html(device: DeviceReport, notebooks_bytes: int = 0) -> str:
    """One device: a bar (this kernel's models, other notebooks' models, other users, the budget line), its numbers.

    ``notebooks_bytes``: what the other managers of this machine (kernels, scripts) hold on it, from the ledger.
    """
    total = max(device.total_bytes, 1)
    held = round(100 * min(device.held_bytes, total) / total)
    notebooks = min(round(100 * min(notebooks_bytes, total) / total), 100 - held)
    others = round(100 * max(device.used_bytes - device.held_bytes - notebooks_bytes, 0) / total)
    budget = round(100 * min(device.budget_bytes, total) / total)
    bar = (
        f"<div style='position:relative; flex:1; height:14px; background:var(--jp-layout-color3, #eee);"
        f" border-radius:3px; overflow:hidden; min-width:8em'>"
        f"<div title='reserved for this kernel&#39;s models' style='position:absolute; left:0; width:{held}%;"
        f" height:100%; background:{_HELD}'></div>"
        f"<div title='held by other notebooks&#39; models' style='position:absolute; left:{held}%;"
        f" width:{notebooks}%; height:100%; background:{_NOTEBOOKS}'></div>"
        f"<div title='used by others' style='position:absolute; left:{held + notebooks}%; width:{others}%;"
        f" height:100%; background:{_OTHERS}'></div>"
        f"<div title='budget' style='position:absolute; left:{budget}%; top:0; bottom:0; width:2px;"
        f" background:{WARNING}'></div></div>")
    numbers = (f"{_coarse(device.used_bytes)} of {device.total_str} used · <span title='{SIZES['reserved']}'>"
               f"{text(device.held_str)} reserved</span> for models · budget {device.budget_str}")
    if notebooks_bytes:
        numbers += (f" · <span style='color:{_NOTEBOOKS}' title='what the other notebooks&#39; models hold here'>"
                    f"other notebooks: {format_bytes(notebooks_bytes)}</span>")
    return (f"<div style='display:flex; flex-wrap:wrap; align-items:center; gap:0.2em 0.6em'>"
            f"<div style='min-width:10em'><b>{text(device.device)}</b> "
            f"<span style='{MUTED}'>{text(device.name)}</span></div>{bar}"
            f"<div style='{WRAP}'>{numbers}</div></div>")
