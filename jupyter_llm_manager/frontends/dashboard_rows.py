"""The dashboard's model grid: one row of widgets per model id, its cells from :mod:`.views.status`.

One grid holds the header and every row, so columns stay aligned at any
width; below the width its columns need, the grid leaves out the last use
and the keep-alive, then shows each model as a card (a container query,
(:func:`grid_css`), so no column gets narrower than its longest word.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..reports import StatusRow
from .dashboard_clicks import Clicks
from .kernel_comms import QUEUED_NOTE
from .views.style import MUTED
from .views.table import Cell, Table

__all__ = ["COLUMNS", "GRID", "SHOWN", "TOOLTIPS", "ModelRow", "apply", "button_values", "close_widgets", "grid_css",
           "header_cells"]

#: The grid's columns (the status view's, then the buttons) and how each takes the width.
COLUMNS = (("model", "minmax(min-content, 2fr)"), ("state", "minmax(min-content, 1.5fr)"),
           ("device", "minmax(min-content, 0.6fr)"), ("memory", "minmax(min-content, 1.6fr)"),
           ("last use", "minmax(min-content, 0.8fr)"), ("keep-alive left", "minmax(min-content, 0.8fr)"),
           ("", "fit-content(17em)"))  # buttons stack when narrow
SHOWN = tuple(name for name, _ in COLUMNS if name)  # the columns of the status view (:mod:`.views.status`)
GRID = " ".join(width for _, width in COLUMNS)
_NARROW_OUT = ("last use", "keep-alive left")  # left out first when the grid is narrow
_BUTTONS_EM = 12.0  # the buttons' column: Load, Unload and Pin side by side, a gap
#: What the other columns need to read well ("loaded · in use (1)" on two lines, "weights 2.1 GB"), in em.
_WORD_EM = {"state": 10.0, "device": 5.5, "memory": 9.0, "last use": 6.0, "keep-alive left": 6.5}
TOOLTIPS = {"Free memory": "collect garbage, empty the CUDA cache",
            "Cancel": "take the Unload back: the model stays loaded",
            "Plan ticked": "would the ticked models fit together? (none ticked: each task's selected option) "
                           "Loads nothing"}


def grid_css(scope: str, table: Table) -> str:
    """Container queries for the grid of ``table`` (the status view) in the dashboard of class ``scope``.

    Below the width its columns' longest words need, the last use and keep-alive go; below what the
    others need, each model is a card: name and state, device and memory, then its buttons. Only the
    ids count (the other columns' words come from a small vocabulary), so the styles change only when
    the ids do.
    """
    index = {name: i for i, (name, _) in enumerate(COLUMNS)}
    kept = [name for name in SHOWN if name not in _NARROW_OUT]
    out = ", ".join(f".{scope} .jlm-models > .jlm-col-{index[name]}" for name in _NARROW_OUT)
    narrower = " ".join(width for name, width in COLUMNS if name not in _NARROW_OUT)
    ids = table.min_width_em(["model"])
    every = ids + sum(_WORD_EM[name] for name in SHOWN if name != "model") + _BUTTONS_EM
    fewer = ids + sum(_WORD_EM[name] for name in kept if name != "model") + _BUTTONS_EM
    grid = f".{scope} .jlm-models"
    return (f".{scope} {{ container-type: inline-size }}"
            f"@container (max-width: {every:.1f}em) {{ {out} {{ display: none !important }}"
            f" {grid} {{ grid-template-columns: {narrower} !important }} }}"
            f"@container (max-width: {fewer:.1f}em) {{ {grid} {{ grid-template-columns: minmax(0, 1fr) auto !important }}"
            f" {grid} > .jlm-head {{ display: none !important }}"
            f" {grid} > .jlm-col-{index['model']}, {grid} > .jlm-col-{index['state']} {{ padding-top: 0.4em;"
            f" border-top: 1px solid var(--jp-border-color2, #ddd) }}"
            f" {grid} > .jlm-col-{len(COLUMNS) - 1} {{ grid-column: 1 / -1 }} }}")


def button_values(widget: Any, label: str, disabled: bool, queued: set[int],
                  hint: str | None) -> tuple[Any, dict[str, Any]]:
    """A button's values: its label, or the label and "runs when the cell finishes" while its click waits."""
    if id(widget) in queued:
        return widget, {"description": f"{label} · {QUEUED_NOTE}", "disabled": True, "tooltip": QUEUED_NOTE}
    tooltip = TOOLTIPS.get(label)
    if hint:
        tooltip = f"{tooltip}; {hint}" if tooltip else hint
    return widget, {"description": label, "disabled": disabled, "tooltip": tooltip}


def header_cells(widgets: Any) -> list[Any]:
    """The grid's header: one muted name per column (hidden when models show as cards)."""
    cells = [widgets.HTML(f"<span style='{MUTED}'>{name}</span>") for name, _ in COLUMNS]
    for index, cell in enumerate(cells):
        cell.add_class("jlm-head")
        cell.add_class(f"jlm-col-{index}")
    return cells


class ModelRow:
    """The widgets of one model id: its cells in the grid, and its Load / Unload / Pin buttons.

    ``on_click``: what each button does (``load``, ``unload``, ``pin``); ``clicks`` routes them.
    """

    def __init__(self, widgets: Any, clicks: Clicks, on_click: Mapping[str, Callable[[], None]]) -> None:
        self.cells = [widgets.HTML(layout=widgets.Layout(min_width="0")) for _ in COLUMNS[:-1]]
        self.load = widgets.Button(description="Load", layout=widgets.Layout(width="auto"))
        self.unload = widgets.Button(description="Unload", layout=widgets.Layout(width="auto"))
        self.pin = widgets.Button(description="Pin", layout=widgets.Layout(width="auto"))
        self.tick = widgets.Checkbox(value=False, indent=False, description="plan",
                                     layout=widgets.Layout(width="auto"))  # ticked models: "Plan ticked"
        for name in ("load", "unload", "pin"):
            clicks.bind(getattr(self, name), on_click[name])
        self.buttons = widgets.HBox([self.load, self.unload, self.pin, self.tick],
                                    layout=widgets.Layout(flex_flow="row wrap", width="auto"))
        for index, cell in enumerate(self.grid_cells):
            cell.add_class(f"jlm-col-{index}")
        clicks.follow([*self.cells, self.tick, self.buttons])

    @property
    def grid_cells(self) -> list[Any]:
        return [*self.cells, self.buttons]

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.load, self.unload, self.pin, self.tick, self.buttons]

    def values(self, row: StatusRow, cells: tuple[Cell, ...], pending: str | None, queued: set[int],
               hint: str | None) -> list[tuple[Any, dict[str, Any]]]:
        """What each widget shows now: the status view's cells, the buttons' labels and whether they act."""
        busy = bool(pending) or row.state == "loading"
        waiting = pending == "unloading"  # its Unload waits for an answer to end: a second click takes it back
        return [*((widget, {"value": cell.as_html()}) for widget, cell in zip(self.cells, cells)),
                button_values(self.load, "Load", busy or row.state == "loaded", queued, hint),
                button_values(self.unload, "Cancel" if waiting else "Unload",
                              not waiting and (busy or row.state != "loaded"), queued, hint),
                button_values(self.pin, "Unpin" if row.pinned else "Pin", bool(pending), queued, hint)]


def close_widgets(widgets: list[Any]) -> None:
    """Close widgets with their layout and style, which are widgets of their own."""
    for widget in widgets:
        for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
            if part is not None and hasattr(part, "close"):
                part.close()


def apply(widget: Any, **values: Any) -> None:
    """Set only the traits whose value changed, in one message per widget."""
    changed = {name: value for name, value in values.items() if getattr(widget, name) != value}
    if not changed:
        return
    with widget.hold_sync():
        for name, value in changed.items():
            setattr(widget, name, value)
