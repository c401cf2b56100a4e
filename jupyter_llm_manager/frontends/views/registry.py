"""The registered models (``manager.status()`` with each id's spec) as one table: ``%llm list`` and the CLI's ``list``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...config.spec import ModelSpec
from ...reports import StatusRow
from .table import Column, Table

__all__ = ["registry_table"]

COLUMNS = (Column("id"), Column("aliases", 2), Column("backend", 3), Column("source"), Column("device", 4),
           Column("state", 1), Column("pinned", 1), Column("estimate", 2), Column("generation defaults", 5))


def registry_table(rows: Sequence[StatusRow], spec: Callable[[str], ModelSpec], default: str | None,
                   caption: str = "Registered models") -> Table:
    """One row per id: names, where it comes from, how it runs; ``spec(id)`` gives its spec."""
    cells = []
    for row in rows:
        model = spec(row.id)
        cells.append([row.id + (" (default)" if row.id == default else ""), ", ".join(row.aliases), row.backend,
                      model.location or "-", str(model.device), row.state, "yes" if row.pinned else "",
                      row.estimated_str or "-", row.generation_str])
    return Table(COLUMNS, cells, caption)
