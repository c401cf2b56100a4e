"""The models of one manager (``manager.status()``) as one table: ``%llm status``, the dashboard, the JupyterLab panel.

Each cell has its text (a terminal, ``%llm status``), its HTML (the
dashboard: the id with its aliases, badges and small print; the state with
what an action waits for) and each row its data (the panel: ids, states and
numbers it acts on).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ...reports import StatusRow
from ...support.units import format_duration
from ..actions import waiting_note
from .style import ID_WRAP, MUTED, SMALL, WARNING, WRAP, attribute, text
from .table import LONG_WORD, Cell, Column, Table

__all__ = ["LEGEND", "SIZES", "memory_html", "name_html", "state_html", "status_table"]

SIZES = {"weights": "measured after the load: what the model's tensors take (llama.cpp models: also their KV "
                    "cache and buffers, as llama.cpp reports them)",
         "needs": "estimated before loading, from metadata: weights + KV cache + overhead",
         "held": "an unloaded copy that something (a variable) still holds: counted against the budget until it "
                 "is let go",
         "reserved": "what this kernel counts against the budget for its loaded models: measured weights + "
                     "the KV cache and overhead of their estimates"}
LEGEND = " · ".join(f"<b>{name}</b>: {meaning}" for name, meaning in SIZES.items())

#: Every column a status row has; a front-end selects those it shows. Narrow, the ``drop`` ones go first.
COLUMNS = (Column("model"), Column("state"), Column("device", 3), Column("estimate", 2), Column("actual"),
           Column("memory"), Column("in use", 2), Column("last use", 1), Column("keep-alive left", 1),
           Column("error"))


def status_table(rows: Sequence[StatusRow], *, pending: Mapping[str, str] | None = None,
                 loading_since: Mapping[str, float] | None = None, now: float = 0.0,
                 endpoints: Mapping[str, str | None] | None = None) -> Table:
    """One row per model id. ``pending``: what a front-end waits for per id; ``loading_since``: wall-clock starts.

    ``endpoints``: where remote models run (the panel's data); ``now``: the wall clock of relative times.
    """
    pending, loading_since, endpoints = pending or {}, loading_since or {}, endpoints or {}
    cells = [[Cell(row.id + (f" ({', '.join(row.aliases)})" if row.aliases else ""), html=name_html(row)),
              Cell(row.state_str, html=state_html(row, pending.get(row.id), loading_since.get(row.id), now)),
              row.device, row.estimated_str, row.actual_str, Cell(_memory_text(row), html=memory_html(row)),
              str(row.in_use or ""), row.last_used_str(), row.expires_in_str(), row.error or ""] for row in rows]
    return Table(COLUMNS, cells, "Models", data=[_data(row, endpoints.get(row.id)) for row in rows])


def _data(row: StatusRow, endpoint: str | None) -> dict[str, Any]:
    """What JupyterLab acts on and shows of a row: ids, states and numbers."""
    return {"id": row.id, "aliases": list(row.aliases), "backend": row.backend, "device": row.device,
            "state": row.state, "in_use": row.in_use, "pinned": row.pinned, "remote": row.remote,
            "estimated": row.estimated_str, "actual": row.actual_str, "actual_bytes": row.actual_bytes,
            "last_used": row.last_used, "expires_at": row.expires_at, "error": row.error,
            "trust_remote_code": row.trust_remote_code, "reachable": row.reachable,
            "waiting_for": row.waiting_for, "endpoint": endpoint if row.remote else None,
            "base": row.base, "adapter": row.adapter, "shares_base": row.shares_base, "base_str": row.base_str,
            "lent_to": list(row.lent_to), "held_bytes": row.held_bytes, "held_by": list(row.held_by)}


def state_html(row: StatusRow, pending: str | None, loading_since: float | None, now: float) -> str:
    """The state cell: what a front-end waits for (and why), else the model's state."""
    if pending:
        note = waiting_note(row, pending)
        return f"<i>{text(pending)}…</i>" + (f"<div style='{SMALL}'>{text(note)}</div>" if note else "")
    if row.state == "loading":
        elapsed = f" {format_duration(now - loading_since)}" if loading_since else ""
        doing = f"<div style='{SMALL}'>{text(row.progress)}</div>" if row.progress else ""
        return f"<progress style='width:4em'></progress> loading{elapsed}{doing}"
    if row.state == "failed":
        return f"<span style='color:{WARNING}' title='{attribute(row.error or '')}'>failed</span>"
    if row.state == "waiting":
        return f"<span title='{attribute(row.waiting_for or '')}'>waiting (#{row.queue_position or 1})</span>"
    notes = [n for flag, n in ((row.in_use, f"in use ({row.in_use})"), (row.pinned, "pinned"),
                               (row.reachable is False, "unreachable"), (row.lent_to, row.lent_to_str),
                               (row.held_bytes, row.held_note)) if flag]
    return text(row.state + (f" · {', '.join(notes)}" if notes else ""))


def _memory_parts(row: StatusRow) -> list[tuple[str, str]]:
    return [(name, value) for name, value in (("weights", row.actual_str), ("needs", row.estimated_str),
                                              ("held", row.held_str if row.held_bytes else "")) if value]


def _memory_text(row: StatusRow) -> str:
    return "on its server" if row.remote else " · ".join(f"{n} {v}" for n, v in _memory_parts(row)) or "?"


def memory_html(row: StatusRow) -> str:
    """The model's sizes, each named: measured weights, and what it needs (the estimate)."""
    if row.remote:
        return f"<span style='{MUTED}'>on its server</span>"
    return " · ".join(f"<span title='{SIZES[name]}'>{name} {text(value)}</span>"
                      for name, value in _memory_parts(row)) or "?"


def name_html(row: StatusRow) -> str:
    """The id, its aliases and badges, then facts (endpoint, context) and an error, in small print."""
    aliases = f" <span style='{MUTED}'>({text(', '.join(row.aliases))})</span>" if row.aliases else ""
    badges = ""
    if row.trust_remote_code:
        badges += f" <span title='runs code from its repository' style='color:{WARNING}'>⚠ remote code</span>"
    facts = [str(row.details.get(k)) for k in ("endpoint", "latency_str", "last_error") if row.details.get(k)]
    if row.context and not row.remote:
        facts.append(f"context {row.context:,} tokens")
    if row.mode == "embed":
        facts.append("embeddings")
    details = f"<div style='{SMALL}'>{text(' · '.join(facts))}</div>" if facts else ""
    if row.base is not None:  # a LoRA adapter: the model it runs on, right under its id
        details = f"<div style='{SMALL}' title='{attribute(row.adapter or '')}'>adapter {text(row.base_str)}</div>" \
                  + details
    if row.error and (row.state in ("failed", "registered") or row.reachable is False):
        details += f"<div style='color:{WARNING}; font-size:smaller'>{text(row.error[:200])}</div>"
    wrap = ID_WRAP if len(row.id) >= LONG_WORD else WRAP  # an id stays whole; a Hub path may wrap anywhere
    return f"<div style='{wrap}'><b>{text(row.id)}</b>{aliases}{badges}{details}</div>"
