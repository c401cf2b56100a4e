"""One table, three renderings: aligned text for a terminal, HTML for a notebook or a widget, JSON for JupyterLab.

Every view (:mod:`jupyter_llm_manager.frontends.views`) turns its report into
one :class:`Table`; a front-end shows it, picking columns with
:meth:`Table.select`, never building rows of its own. A table fits its
width: columns marked ``drop`` are left out first (text: within a given
width; HTML: a container query below the width its words need), and when
even the others do not fit each row becomes a card (one ``column: value``
line each). A cell is never cut: a word stays whole, only long paths and
URLs wrap anywhere.
"""

from __future__ import annotations

import hashlib
import html
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cached_property
from operator import itemgetter
from typing import Any, NamedTuple

from ...support.units import displayable

__all__ = ["LONG_WORD", "Cell", "Column", "Table"]

_NOWRAP = "white-space: nowrap"  # the first column names the row: it never breaks
_WORDS = "overflow-wrap: break-word"  # lines break between words; a column is never narrower than its longest word
_ANYWHERE = "overflow-wrap: anywhere"  # a long path or URL wraps anywhere rather than taking the width
LONG_WORD = 24  # characters: a word this long is a path, a URL or a hash, not a word to keep whole
_MUTED = "color: var(--jp-ui-font-color2, gray)"
#: What one character and one column's padding take in HTML, in em of the table's font (generous: a table
#: leaves a column out a little early rather than squeezing words or spilling over).
_CHAR_EM, _PAD_EM = 0.62, 1.6
_GAP = "  "  # between text columns


class Cell(NamedTuple):
    """One value as shown: its text, more on hover (``title``: a full path), and HTML where text is not enough.

    A named tuple, not a dataclass: a table of 20,000 models makes 160,000 of them, and a tuple is made in a
    fraction of the time.
    """

    text: str
    title: str = ""
    html: str = ""

    def as_html(self) -> str:
        return self.html or html.escape(self.text)


@dataclass(frozen=True)
class Column:
    """A column's name, and when it may be left out: ``drop`` 0 never, else in that order (1 first) when narrow."""

    name: str
    drop: int = 0


def _cell(value: Any) -> Cell:
    return value if isinstance(value, Cell) else Cell(value if isinstance(value, str) else str(value))


def _column(value: str | Column) -> Column:
    return value if isinstance(value, Column) else Column(str(value))


def _longest_word(text: str) -> int:
    return max(map(len, text.split()), default=0)


def _cell_style(longest_word: int, first: bool) -> str:
    """How a cell wraps: words stay whole ("registered", "llama_cpp"); only long paths and URLs break anywhere."""
    if first:
        return _NOWRAP
    return _ANYWHERE if longest_word >= LONG_WORD else _WORDS


@dataclass(frozen=True, init=False)
class Table:
    """Columns, rows of cells, an optional caption and notes below; ``data``: per row, ids and numbers (JSON only)."""

    columns: tuple[Column, ...]
    rows: tuple[tuple[Cell, ...], ...]
    caption: str
    notes: tuple[str, ...]
    data: tuple[Mapping[str, Any], ...]

    def __init__(self, columns: Iterable[str | Column], rows: Iterable[Iterable[Any]], caption: str = "",
                 notes: Iterable[str] = (), data: Iterable[Mapping[str, Any]] = ()) -> None:
        """Plain strings are columns and cells too."""
        object.__setattr__(self, "columns", tuple(_column(c) for c in columns))
        object.__setattr__(self, "rows", tuple(tuple(map(_cell, row)) for row in rows))
        object.__setattr__(self, "caption", caption)
        object.__setattr__(self, "notes", tuple(notes))
        object.__setattr__(self, "data", tuple(data))

    @classmethod
    def of_cells(cls, columns: Iterable[Column], rows: Iterable[tuple[Cell, ...]], caption: str = "") -> Table:
        """A table of rows that are tuples of :class:`Cell` already (taken as they are, for large tables)."""
        return cls._made(tuple(columns), tuple(rows), caption, (), ())

    @classmethod
    def _made(cls, columns: tuple[Column, ...], rows: tuple[tuple[Cell, ...], ...], caption: str,
              notes: tuple[str, ...], data: tuple[Mapping[str, Any], ...]) -> Table:
        made = object.__new__(cls)
        for name, value in (("columns", columns), ("rows", rows), ("caption", caption), ("notes", notes),
                            ("data", data)):
            object.__setattr__(made, name, value)
        return made

    @property
    def names(self) -> list[str]:
        return [column.name for column in self.columns]

    def cell(self, row: int, column: str) -> Cell:
        """The cell of row number ``row`` under the column named ``column``."""
        return self.rows[row][self.names.index(column)]

    def select(self, *names: str, caption: str | None = None) -> Table:
        """The same table with only the columns ``names``, in that order."""
        return self._picked([self.names.index(name) for name in names], self.caption if caption is None else caption)

    def _shown(self, keep: set[int]) -> Table:
        return self._picked(sorted(keep), self.caption)

    def _picked(self, indexes: list[int], caption: str) -> Table:
        """The columns at ``indexes``: its cells are cells already, so they are taken as they are."""
        rows: tuple[tuple[Cell, ...], ...]
        if len(indexes) == 1:  # itemgetter of one index gives the cell itself, not a tuple
            rows = tuple((row[indexes[0]],) for row in self.rows)
        else:
            rows = tuple(map(itemgetter(*indexes), self.rows)) if indexes else tuple(() for _ in self.rows)
        return Table._made(tuple(self.columns[i] for i in indexes), rows, caption, self.notes, self.data)

    def _narrowing(self) -> Iterable[set[int]]:
        """The columns shown at each step as the width shrinks: all, then without each ``drop`` level in turn."""
        columns = self.columns
        keep = set(range(len(columns)))
        yield set(keep)
        for level in sorted({c.drop for c in columns if c.drop}, reverse=False):
            keep -= {i for i, c in enumerate(columns) if c.drop == level}
            yield set(keep)

    # -- text ------------------------------------------------------------------------------------

    def text(self, width: int | None = None) -> str:
        """Aligned text; within ``width`` characters when given (columns left out, else one card per row)."""
        if width is None:
            return self._lines()
        for keep in self._narrowing():
            shown = self._shown(keep)
            if shown._text_width() <= width:
                return shown._lines()
        return self._cards()

    def _text_width(self) -> int:
        widths = self._widths(self._columns_text())
        return sum(widths) + len(_GAP) * (len(widths) - 1)

    def _columns_text(self) -> list[tuple[str, ...]]:
        """Each column's texts, its name first."""
        return [(name, *(cell.text for cell in column))
                for name, column in zip(self.names, zip(*self.rows) if self.rows else [()] * len(self.columns))]

    @staticmethod
    def _widths(columns: list[tuple[str, ...]]) -> list[int]:
        return [max(map(len, column)) for column in columns]

    def _lines(self) -> str:
        columns = self._columns_text()
        widths = self._widths(columns)
        padded = [[value.ljust(width) for value in column] for column, width in zip(columns, widths)]
        rows = [line.rstrip() for line in map(_GAP.join, zip(*padded))] or [""]  # (zip reuses its tuple)
        lines = [self.caption] if self.caption else []
        lines += [rows[0], _GAP.join("-" * width for width in widths), *rows[1:]]
        if not self.rows:
            lines.append("(none)")
        lines.extend(self.notes)
        return displayable("\n".join(lines))

    def _cards(self) -> str:
        """One block per row: its first cell, then ``column: value`` for every other value, indented."""
        lines = [self.caption] if self.caption else []
        for row in self.rows:
            cells = row
            lines.append(cells[0].text if cells else "")
            lines += [f"  {name}: {cell.text}" for name, cell in zip(self.names[1:], cells[1:]) if cell.text]
        if not self.rows:
            lines.append("(none)")
        lines.extend(self.notes)
        return displayable("\n".join(lines))

    def __repr__(self) -> str:
        return self.text()

    # -- HTML ------------------------------------------------------------------------------------

    def html(self) -> str:
        """The table as HTML (what a notebook and the dashboard show); it adapts to the width it is given."""
        return self._repr_html_()

    def min_width_em(self, names: Iterable[str]) -> float:
        """The width (em) the columns ``names`` need so that none is narrower than its longest word."""
        return self._min_em({self.names.index(name) for name in names})

    def _min_em(self, keep: set[int]) -> float:
        ems = self._column_ems
        return sum(ems[i] for i in keep)

    @cached_property
    def _longest_words(self) -> list[list[int]]:
        """Per column, the longest word of each cell (computed once: a table may have 20,000 rows)."""
        return [list(map(_longest_word, (cell.text for cell in column)))
                for column in (zip(*self.rows) if self.rows else [()] * len(self.columns))]

    @cached_property
    def _column_ems(self) -> list[float]:
        """Per column, the width (em) its longest word needs (a path or URL counts as a long word only)."""
        return [min(max(_longest_word(name), max(words, default=0)), LONG_WORD) * _CHAR_EM + _PAD_EM
                for name, words in zip(self.names, self._longest_words)]

    def _responsive_css(self, name: str) -> str:
        """Container queries: columns left out below the width their words need; cards below the narrowest."""
        rules, steps = [f".{name} td, .{name} th {{ padding-right: {_PAD_EM / 2:.1f}em }}"], list(self._narrowing())
        for wider, narrower in itertools.pairwise(steps):
            hidden = ", ".join(f".{name} .jlm-c{i}" for i in sorted(wider - narrower))
            rules.append(f"@container (max-width: {self._min_em(wider):.1f}em) {{ {hidden} {{ display: none }} }}")
        cards = (f".{name} thead {{ display: none }} .{name} tr {{ display: block; padding: 0.2em 0 }} "
                 f".{name} td, .{name} td[class] {{ display: block; white-space: normal }} "
                 f".{name} td:empty {{ display: none }} "
                 f".{name} td[data-label]:not(:first-child)::before {{ content: attr(data-label) ': '; {_MUTED} }}")
        rules.append(f"@container (max-width: {self._min_em(steps[-1]):.1f}em) {{ {cards} }}")
        return "".join(rules)

    def _repr_html_(self) -> str:
        css = self._responsive_css("\0")  # the class name comes from the rules themselves
        name = "jlm-t" + hashlib.sha1(css.replace("\0", "").encode()).hexdigest()[:10]
        head = "".join(f"<th class='jlm-c{i}' style='text-align:left'>{html.escape(c)}</th>"
                       for i, c in enumerate(self.names))
        opening = [f"<td class='jlm-c{i}' data-label='{html.escape(label)}'" for i, label in enumerate(self.names)]
        styles = [[_cell_style(longest, i == 0) for longest in words] for i, words in enumerate(self._longest_words)]
        body = "".join(
            "<tr>" + "".join(_td(opening[i], styles[i][r], cell) for i, cell in enumerate(row)) + "</tr>"
            for r, row in enumerate(self.rows))
        caption = f"<caption style='text-align:left'><b>{html.escape(self.caption)}</b></caption>" if self.caption \
            else ""
        notes = "".join(f"<div style='{_MUTED}'>{html.escape(n)}</div>" for n in self.notes)
        empty = "" if self.rows else "<div><i>(none)</i></div>"
        return (f"<div class='{name}' style='container-type: inline-size'><style>{css.replace(chr(0), name)}</style>"
                f"<table class='jupyter-llm-manager'>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                f"</table>{empty}{notes}</div>")


    # -- JSON ------------------------------------------------------------------------------------

    def json(self) -> dict[str, Any]:
        """The table for JupyterLab: columns, then per row its cells (text, hover) and its data (ids, numbers)."""
        columns = self.columns
        data = list(self.data) + [{}] * (len(self.rows) - len(self.data))
        return {"caption": self.caption, "notes": list(self.notes),
                "columns": [{"name": c.name, "drop": c.drop} for c in columns],
                "rows": [{**values, "cells": {name: {"text": c.text, "title": c.title}
                                               for name, c in zip(self.names, row)}}
                         for row, values in zip(self.rows, data)]}


def _td(opening: str, style: str, cell: Cell) -> str:
    """One cell: ``opening`` is its column's ``<td class=… data-label=…``."""
    title = f" title='{html.escape(cell.title)}'" if cell.title else ""
    return f"{opening}{title} style='text-align:left; {style}'>{cell.as_html()}</td>"
