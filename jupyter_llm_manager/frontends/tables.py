"""A table that renders as HTML in a notebook and as aligned text in a terminal.

IPython picks ``_repr_html_`` where HTML is shown and ``__repr__`` elsewhere,
so the front-ends build one :class:`Table` and display it.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..support.units import displayable

__all__ = ["Table"]

_NOWRAP = "white-space: nowrap"  # the first column names the row: it never breaks
_WORDS = "overflow-wrap: break-word"  # lines break between words; a column is never narrower than its longest word
_ANYWHERE = "overflow-wrap: anywhere"  # a long path or URL wraps anywhere rather than taking the width
_LONG_WORD = 24  # characters: a word this long is a path, a URL or a hash, not a word to keep whole


def _cell_style(value: str, first: bool) -> str:
    """How a cell wraps: words stay whole ("registered", "llama_cpp"); only long paths and URLs break anywhere."""
    if first:
        return _NOWRAP
    return _ANYWHERE if any(len(word) >= _LONG_WORD for word in value.split()) else _WORDS


@dataclass(frozen=True)
class Table:
    """Columns, rows of strings, an optional caption and notes below."""

    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str = ""
    notes: Sequence[str] = field(default_factory=tuple)

    def html(self) -> str:
        """The table as HTML (what a notebook shows)."""
        return self._repr_html_()

    def _repr_html_(self) -> str:
        head = "".join(f"<th style='text-align:left'>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td style='text-align:left; {_cell_style(str(v), i == 0)}'>{html.escape(str(v))}</td>"
                             for i, v in enumerate(row)) + "</tr>"
            for row in self.rows
        )
        caption = f"<caption style='text-align:left'><b>{html.escape(self.caption)}</b></caption>" if self.caption else ""
        notes = "".join(f"<div style='color:var(--jp-ui-font-color2, gray)'>{html.escape(n)}</div>"
                        for n in self.notes)
        empty = "" if self.rows else "<div><i>(none)</i></div>"
        return f"<table class='jupyter-llm-manager'>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>{empty}{notes}"

    def __repr__(self) -> str:
        cells = [list(self.columns)] + [[str(v) for v in row] for row in self.rows]
        widths = [max(len(row[i]) for row in cells) for i in range(len(self.columns))]
        lines = [self.caption] if self.caption else []
        for index, row in enumerate(cells):
            lines.append("  ".join(value.ljust(width) for value, width in zip(row, widths)).rstrip())
            if index == 0:
                lines.append("  ".join("-" * width for width in widths))
        if not self.rows:
            lines.append("(none)")
        lines.extend(self.notes)
        return displayable("\n".join(lines))
