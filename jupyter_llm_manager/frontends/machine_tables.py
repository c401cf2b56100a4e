"""The whole machine (``manager.machine()``) as tables: for ``%llm status --all`` and ``jupyter-llm-manager ps``."""

from __future__ import annotations

from ..reports import MachineReport
from .tables import Table

__all__ = ["machine_tables"]


def machine_tables(report: MachineReport, *, include_this: bool = True) -> list[Table]:
    """Kernels, then their models by device (most recently used first), then GPU users that are not managers.

    ``include_this=False`` leaves out the reporting manager (a terminal's ``ps`` is not a kernel).
    """
    kernels = [k for k in report.kernels if include_this or not k.this]
    models = sorted((m for m in report.models if include_this or not m.this),
                    key=lambda m: (m.device, -m.last_used))
    tables = [Table(["notebook", "pid", "kernel", "models", "holds"],
                    [[k.notebook + (" (this one)" if k.this else ""), str(k.pid), k.kernel[:8] or "-",
                      str(k.models), k.bytes_str] for k in kernels],
                    caption=_caption(report, len(kernels))),
              Table(["device", "model", "notebook", "memory", "state", "pinned", "in use", "last use"],
                    [[m.device, m.model_id, m.notebook, m.bytes_str, m.state, "yes" if m.pinned else "",
                      str(m.in_use or ""), m.last_used_str()] for m in models],
                    caption="Models on this machine" if models else "No model is loaded on this machine")]
    if report.others:
        tables.append(Table(["device", "pid", "process", "memory"],
                            [[p.device, str(p.pid), p.name, p.bytes_str] for p in report.others],
                            caption="Other processes on the GPUs (not managers: shown, never asked)"))
    return tables


def _caption(report: MachineReport, count: int) -> str:
    if not report.cooperating:
        return "Cooperation is off (cooperate=False): only this kernel is shown"
    if count == 0:
        return f"No notebook on this machine holds a model (a kernel joins the ledger {report.ledger} when it loads one)"
    kernels = "1 manager" if count == 1 else f"{count} managers"
    return f"{kernels} on this machine share {report.ledger}"
