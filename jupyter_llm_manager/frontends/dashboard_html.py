"""What the dashboard's HTML cells show: devices, a model's name, state and sizes, events, messages.

Pure functions of the manager's reports (and of what this dashboard has
pending), so the writer thread only compares strings before it sends them.
"""

from __future__ import annotations

import html
import time

from ..events import Event
from ..reports import DeviceReport, StatusRow
from ..support.heavy_imports import ready
from ..support.units import format_bytes, format_duration
from .actions import waiting_note
from .tables import Table

__all__ = ["BUDGET_COLOR", "LEGEND", "MUTED", "WRAP", "device_html", "event_html", "memory_html", "message_html",
           "name_html", "no_gpu_note", "state_html", "text"]

WRAP = "overflow-wrap: break-word"  # lines break between words; a word breaks only when it cannot fit alone
_ID_WRAP = "overflow-wrap: anywhere"  # a long id (a Hub path) wraps rather than widening its column
MUTED = "color: var(--jp-ui-font-color2, #777)"
BUDGET_COLOR = "#dc2626"
_HELD, _NOTEBOOKS, _OTHERS = "#3b82f6", "#f59e0b", "#a3a3a3"
_SIZES = {"weights": "measured after the load: what the model's tensors take (llama.cpp models: also their KV "
                     "cache and buffers, as llama.cpp reports them)",
          "needs": "estimated before loading, from metadata: weights + KV cache + overhead",
          "reserved": "what this kernel counts against the budget for its loaded models: measured weights + "
                      "the KV cache and overhead of their estimates"}
LEGEND = " · ".join(f"<b>{name}</b>: {meaning}" for name, meaning in _SIZES.items())


def text(value: str) -> str:
    """Escape for an HTML text node (quotes need no escaping there and stay readable)."""
    return html.escape(value, quote=False)


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
        f" background:{BUDGET_COLOR}'></div></div>")
    numbers = (f"{_coarse(device.used_bytes)} of {device.total_str} used · <span title='{_SIZES['reserved']}'>"
               f"{text(device.held_str)} reserved</span> for models · budget {device.budget_str}")
    if notebooks_bytes:
        numbers += (f" · <span style='color:{_NOTEBOOKS}' title='what the other notebooks&#39; models hold here'>"
                    f"other notebooks: {format_bytes(notebooks_bytes)}</span>")
    return (f"<div style='display:flex; flex-wrap:wrap; align-items:center; gap:0.2em 0.6em'>"
            f"<div style='min-width:10em'><b>{text(device.device)}</b> "
            f"<span style='{MUTED}'>{text(device.name)}</span></div>{bar}"
            f"<div style='{WRAP}'>{numbers}</div></div>")


def no_gpu_note() -> str:
    """Why no GPU is listed, in one muted line."""
    from ..devices import nvml_error

    reason = nvml_error() or "no NVIDIA GPU reported"
    torch = ready("torch")
    if torch is not None and not torch.cuda.is_available():
        reason += f"; torch {torch.__version__} sees no CUDA device"
    return (f"<div style='{MUTED}'>No GPU visible to this kernel ({text(reason)}). Models run on the CPU; "
            "run <code>jupyter-llm-manager doctor</code> to see why.</div>")


def state_html(row: StatusRow, pending: str | None, loading_since: float | None, now: float) -> str:
    """The state cell: what this dashboard waits for (and why), else the model's state."""
    if pending:
        note = waiting_note(row, pending)
        return f"<i>{text(pending)}…</i>" + (f"<div style='{MUTED}; font-size:smaller'>{text(note)}</div>" if note
                                             else "")
    if row.state == "loading":
        elapsed = f" {format_duration(now - loading_since)}" if loading_since else ""
        doing = f"<div style='{MUTED}; font-size:smaller'>{text(row.progress)}</div>" if row.progress else ""
        return f"<progress style='width:4em'></progress> loading{elapsed}{doing}"
    if row.state == "failed":
        return f"<span style='color:{BUDGET_COLOR}' title='{html.escape(row.error or '')}'>failed</span>"
    if row.state == "waiting":
        return f"<span title='{html.escape(row.waiting_for or '')}'>waiting (#{row.queue_position or 1})</span>"
    notes = [n for flag, n in ((row.in_use, f"in use ({row.in_use})"), (row.pinned, "pinned"),
                               (row.reachable is False, "unreachable")) if flag]
    return text(row.state + (f" · {', '.join(notes)}" if notes else ""))


def memory_html(row: StatusRow) -> str:
    """The model's sizes, each named: measured weights, and what it needs (the estimate)."""
    if row.remote:
        return f"<span style='{MUTED}'>on its server</span>"
    parts = [(name, value) for name, value in (("weights", row.actual_str), ("needs", row.estimated_str)) if value]
    return " · ".join(f"<span title='{_SIZES[name]}'>{name} {text(value)}</span>" for name, value in parts) or "?"


def name_html(row: StatusRow) -> str:
    """The id, its aliases and badges, then facts (endpoint, context) and an error, in small print."""
    aliases = f" <span style='{MUTED}'>({text(', '.join(row.aliases))})</span>" if row.aliases else ""
    badges = ""
    if row.trust_remote_code:
        badges += f" <span title='runs code from its repository' style='color:{BUDGET_COLOR}'>⚠ remote code</span>"
    facts = [str(row.details.get(k)) for k in ("endpoint", "latency_str", "last_error") if row.details.get(k)]
    if row.context and not row.remote:
        facts.append(f"context {row.context:,} tokens")
    if row.mode == "embed":
        facts.append("embeddings")
    details = f"<div style='{MUTED}; font-size:smaller'>{text(' · '.join(facts))}</div>" if facts else ""
    if row.base is not None:  # a LoRA adapter: the model it runs on, right under its id
        details = (f"<div style='{MUTED}; font-size:smaller' title='{html.escape(row.adapter or '')}'>"
                   f"adapter {text(row.base_str)}</div>") + details
    if row.error and (row.state in ("failed", "registered") or row.reachable is False):
        details += f"<div style='color:{BUDGET_COLOR}; font-size:smaller'>{text(row.error[:200])}</div>"
    return f"<div style='{_ID_WRAP}'><b>{text(row.id)}</b>{aliases}{badges}{details}</div>"


def event_html(events: list[Event]) -> str:
    """The most recent events first, as a table whose headers sit over their values."""
    rows = [[time.strftime("%H:%M:%S", time.localtime(e.time)), e.model_id or "",
             e.kind + (f" ({e.reason})" if e.reason else ""), f"{e.seconds:.2f} s" if e.seconds is not None else "",
             e.bytes_str, e.message[:300]] for e in reversed(events)]
    table = Table(["time", "model", "what", "seconds", "bytes", "message"], rows)
    return f"<div style='font-size:smaller'>{table.html()}</div>"


def message_html(when: float, failed: bool, said: str) -> str:
    """One outcome of an action, timed, red when it failed."""
    color = f"color:{BUDGET_COLOR}" if failed else MUTED
    return (f"<div style='{color}; white-space:pre-wrap'>{time.strftime('%H:%M:%S', time.localtime(when))} "
            f"{text(said)}</div>")
