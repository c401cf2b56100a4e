"""The registered models (``manager.status()`` with each id's spec) as one table: ``%llm list`` and the CLI's ``list``."""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ...config.spec import ModelSpec
from ...reports import StatusRow
from .table import Cell, Column, Table

__all__ = ["RowCells", "registry_table"]

COLUMNS = (Column("id"), Column("aliases", 2), Column("backend", 3), Column("source"), Column("device", 4),
           Column("state", 1), Column("pinned", 1), Column("estimate", 2), Column("generation defaults", 5))

#: A front-end that lists again and again keeps each row's cells: id -> (its status row, default?, the cells).
RowCells = dict[str, tuple[StatusRow, bool, tuple[Cell, ...]]]


def registry_table(rows: Sequence[StatusRow], spec: Callable[[str], ModelSpec], default: str | None,
                   caption: str = "Registered models", *, columns: Sequence[str] | None = None,
                   kept: RowCells | None = None) -> Table:
    """One row per id: names, where it comes from, how it runs; ``spec(id)`` gives its spec.

    ``columns``: the names of the columns to show (all by default). ``kept``: the cells of the previous
    listing with the same columns, updated here. The manager hands out the very same row for an id whose
    model did not move (nor its spec), so those cells are taken again as they are, and nothing new is made
    for them: listing 20,000 ids again costs little more than asking for their rows.
    """
    names = [c.name for c in COLUMNS]
    indexes = [names.index(name) for name in columns] if columns is not None else list(range(len(COLUMNS)))
    kept = kept if kept is not None else {}
    cells = []
    for row in rows:
        is_default = row.id == default
        found = kept.get(row.id)
        if found is None or found[0] is not row or found[1] != is_default:
            found = kept[row.id] = (row, is_default, _cells(row, spec(row.id), is_default, indexes))
        cells.append(found[2])
    if len(kept) > len(rows):  # ids gone since the last listing
        listed = {row.id for row in rows}
        for gone in [model_id for model_id in kept if model_id not in listed]:
            del kept[gone]
    return Table.of_cells([COLUMNS[i] for i in indexes], cells, caption)


def _cells(row: StatusRow, model: ModelSpec, is_default: bool, indexes: list[int]) -> tuple[Cell, ...]:
    values = (row.id + (" (default)" if is_default else ""), ", ".join(row.aliases), row.backend,
              model.location or "-", str(model.device), row.state, "yes" if row.pinned else "",
              row.estimated_str or "-", row.generation_str)
    return tuple(Cell(values[i]) for i in indexes)
