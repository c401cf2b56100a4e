"""The models dashboard: devices, models, actions and events, live, in an ipywidgets panel.

Open it with ``%llm dashboard`` or ``jupyter_llm_manager.open_dashboard()``. It turns manager snapshots into widget
values and clicks into manager calls, nothing more:

- one background thread is the only writer of widget state. Manager events
  wake it at once; device figures are refreshed about every two seconds.
  Only values that changed are sent, a widget's changes batched with
  ``hold_sync``, and system memory is rounded, so an idle dashboard sends no
  message;
- clicks act while a cell runs where the frontend sends them on a kernel
  subshell (JupyterLab >= 4.4): every widget follows the frontend's routing
  (:mod:`.kernel_comms`). Where a click waits for the running cell, its
  button says "runs when the cell finishes" as soon as the click arrives;
- a click runs its action (:mod:`.actions`, shared with the magics and
  JupyterLab) on a short-lived thread; the row shows what is pending, what
  it waits for, and the result;
- every table comes from :mod:`.views` (the models' cells, "This machine", the
  events, a plan); "This machine" lists the other notebooks' models (:mod:`.machine_reader`),
  read by the writer at most every refresh interval; the device bars show
  what they hold;
- it holds model ids, never model objects. ``close()`` stops the thread,
  unsubscribes and closes every widget.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import LLMManagerError, log_failure
from ..events import Event
from ..reports import StatusRow
from ..support.units import format_duration
from . import actions
from .dashboard_html import message_html, no_gpu_note
from .kernel_comms import QUEUED_NOTE, cell_watch, clicks_wait_for_cells, follow_frontend
from .machine_reader import MachineReader
from .views.devices import device_html
from .views.events import events_table
from .views.machine import machine_html
from .views.status import LEGEND, status_table
from .views.style import MUTED, WRAP, text
from .views.table import Cell

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

# One grid for the header and every row, so columns stay aligned at any width (a side panel too).
# Columns of short words are never narrower than their longest word ("registered", "llama_cpp" stay whole).
_COLUMNS = (("model", "minmax(5em, 2fr)"), ("state", "minmax(min-content, 1.5fr)"),
            ("device", "minmax(min-content, 0.6fr)"), ("memory", "minmax(min-content, 1.6fr)"),
            ("last use", "minmax(min-content, 0.8fr)"), ("keep-alive left", "minmax(min-content, 0.8fr)"),
            ("", "fit-content(17em)"))  # buttons stack when narrow
_SHOWN = tuple(name for name, _ in _COLUMNS if name)  # the columns of the status view (:mod:`.views.status`)
_GRID = " ".join(width for _, width in _COLUMNS)
_ACTION_JOIN_S = actions.ACTION_WAIT_S + 5.0
_TOOLTIPS = {"Free memory": "collect garbage, empty the CUDA cache",
             "Plan ticked": "would the ticked models fit together? (none ticked: each task's selected option) "
                            "Loads nothing"}


def _is_click(data: Any) -> bool:
    """A button's click as ipywidgets sends it: ``{"method": "custom", "content": {"event": "click"}}``."""
    content = data.get("content") if isinstance(data, dict) else None
    return isinstance(content, dict) and data.get("method") == "custom" and content.get("event") == "click"


def _button(widget: Any, label: str, disabled: bool, queued: set[int], hint: str | None) -> tuple[Any, dict[str, Any]]:
    """A button's values: its label, or the label and "runs when the cell finishes" while its click waits."""
    if id(widget) in queued:
        return widget, {"description": f"{label} · {QUEUED_NOTE}", "disabled": True, "tooltip": QUEUED_NOTE}
    tooltip = _TOOLTIPS.get(label)
    if hint:
        tooltip = f"{tooltip}; {hint}" if tooltip else hint
    return widget, {"description": label, "disabled": disabled, "tooltip": tooltip}


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as error:  # raised when a dashboard is made, never at import
        raise ImportError("the dashboard needs ipywidgets: pip install ipywidgets") from error
    return ipywidgets


class _Clicks:
    """Every widget follows the frontend's routing; which buttons' clicks wait for the running cell.

    Clicks sent on a kernel subshell run at once. One that arrives for the
    busy main shell marks its button "runs when the cell finishes" until it
    runs; on a kernel that takes no click during a cell (ipykernel < 7), every
    button says so in its tooltip while a cell runs (:meth:`hint`).
    """

    def __init__(self, wake: Callable[[], None], say: Callable[[str], None]) -> None:
        self._lock = threading.Lock()
        self._queued: set[int] = set()
        self._wake = wake
        self._say = say
        self._cells = cell_watch()
        self._cells_block_clicks = clicks_wait_for_cells()

    def bind(self, button: Any, action: Callable[[], None]) -> None:
        """``action`` on a click; a click that waits for the running cell shows it on the button at once."""

        def clicked(_: Any) -> None:
            with self._lock:
                self._queued.discard(id(button))  # it arrived: the wait is over
            action()

        button.on_click(clicked)
        self.follow([button], lambda data: self._waiting(button, data))

    def follow(self, widgets: list[Any], on_queued: Callable[[Any], None] | None = None) -> None:
        """Let the frontend route the messages of ``widgets`` (and of their layouts and styles)."""
        for widget in widgets:
            follow_frontend(getattr(widget, "comm", None), on_queued, self._cells)
            for part in (getattr(widget, "layout", None), getattr(widget, "style", None)):
                follow_frontend(getattr(part, "comm", None), None, self._cells)

    def follow_field(self, field: Any, name: str) -> None:
        """A setting typed in ``field``: when its change waits for the cell, a message says so at once."""

        def waiting(data: Any) -> None:
            state = data.get("state") if isinstance(data, dict) else None
            if isinstance(state, dict) and "value" in state:
                self._say(f"The new {name} {QUEUED_NOTE}.")

        self.follow([field], waiting)

    def _waiting(self, button: Any, data: Any) -> None:
        """On ipykernel's shell-channel thread, as a click arrives for the busy main shell."""
        if _is_click(data):
            with self._lock:
                self._queued.add(id(button))
            self._wake()

    def queued(self) -> set[int]:
        """The buttons (by ``id``) whose click waits for the running cell."""
        with self._lock:
            return set(self._queued)

    def hint(self) -> str | None:
        """What every button's tooltip says while no click can reach the kernel (a cell runs, no subshells)."""
        return QUEUED_NOTE if self._cells_block_clicks and self._cells.busy else None


class _ModelRow:
    """The widgets of one model id: its cells in the grid, and its Load / Unload / Pin buttons."""

    def __init__(self, widgets: Any, dashboard: Dashboard, model_id: str) -> None:
        self.cells = [widgets.HTML(layout=widgets.Layout(min_width="0")) for _ in _COLUMNS[:-1]]
        self.load = widgets.Button(description="Load", layout=widgets.Layout(width="auto"))
        self.unload = widgets.Button(description="Unload", layout=widgets.Layout(width="auto"))
        self.pin = widgets.Button(description="Pin", layout=widgets.Layout(width="auto"))
        self.tick = widgets.Checkbox(value=False, indent=False, description="plan",
                                     layout=widgets.Layout(width="auto"))  # ticked models: "Plan ticked"
        dashboard.clicks.bind(self.load, lambda: dashboard.load(model_id))
        dashboard.clicks.bind(self.unload, lambda: dashboard.unload(model_id))
        dashboard.clicks.bind(self.pin, lambda: dashboard.toggle_pin(model_id))
        self.buttons = widgets.HBox([self.load, self.unload, self.pin, self.tick],
                                    layout=widgets.Layout(flex_flow="row wrap", width="auto"))
        dashboard.clicks.follow([*self.cells, self.tick, self.buttons])

    @property
    def grid_cells(self) -> list[Any]:
        return [*self.cells, self.buttons]

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.load, self.unload, self.pin, self.tick, self.buttons]

    def values(self, row: StatusRow, cells: tuple[Cell, ...], pending: str | None, queued: set[int],
               hint: str | None) -> list[tuple[Any, dict[str, Any]]]:
        texts = [cell.as_html() for cell in cells]
        busy = bool(pending) or row.state == "loading"
        return [*((cell, {"value": value}) for cell, value in zip(self.cells, texts)),
                _button(self.load, "Load", busy or row.state == "loaded", queued, hint),
                _button(self.unload, "Unload", busy or row.state != "loaded", queued, hint),
                _button(self.pin, "Unpin" if row.pinned else "Pin", bool(pending), queued, hint)]


class Dashboard:
    """A live panel of this kernel's devices, models and events (see the module docstring).

    ``background=False`` runs no thread: clicks call the manager at once and
    :meth:`refresh` renders (for tests and scripted use).
    """

    def __init__(self, manager: LLMManager | None = None, *, refresh_interval: float = 2.0,
                 event_limit: int = 50, background: bool = True) -> None:
        widgets = _ipywidgets()
        if manager is None:
            from ..manager.kernel import get_manager

            manager = get_manager()
        self.manager = manager
        self.refresh_interval = refresh_interval
        self.event_limit = event_limit
        self.background = background
        self._widgets_module = widgets
        self._lock = threading.Lock()
        self._pending: dict[str, str] = {}
        self._loading_since: dict[str, float] = {}
        self._messages: deque[tuple[float, bool, str]] = deque(maxlen=5)  # (time, failed, text)
        self._actions: list[threading.Thread] = []
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rows: dict[str, _ModelRow] = {}
        self._plan_text = ""
        self.clicks = _Clicks(self._wake.set, self._say)
        self._machine = MachineReader(manager)
        self._build(widgets)
        self._unsubscribe = manager.subscribe(self._on_event)
        self.refresh()
        self._thread: threading.Thread | None = None
        if background:
            self._thread = threading.Thread(target=self._run, name="llm-dashboard-refresh", daemon=True)
            self._thread.start()

    # -- building --------------------------------------------------------------------

    def _build(self, widgets: Any) -> None:
        self._title = widgets.HTML("<b>LLM models in this kernel</b>")
        self._devices, self._machine_html = widgets.HTML(), widgets.HTML()
        self._header_cells = [widgets.HTML(f"<span style='{MUTED}'>{name}</span>") for name, _ in _COLUMNS]
        self._model_box = widgets.GridBox(self._header_cells, layout=widgets.Layout(
            grid_template_columns=_GRID, grid_gap="2px 10px", align_items="center", width="100%"))
        self._legend = widgets.HTML(f"<div style='{MUTED}; font-size:smaller; {WRAP}'>{LEGEND}</div>")
        self._cap = widgets.Text(description="Max models", value=self._cap_text(), placeholder="no cap",
                                 layout=widgets.Layout(width="12em"), continuous_update=False,
                                 tooltip="how many models may be loaded at once; empty: no cap")
        self._keep_alive = widgets.Text(description="Keep-alive", value=self._keep_alive_text(),
                                        layout=widgets.Layout(width="14em"), continuous_update=False,
                                        placeholder="10m, 1h, never")
        self._unload_all = widgets.Button(description="Unload all", button_style="warning")
        self._free = widgets.Button(description="Free memory", tooltip=_TOOLTIPS["Free memory"])
        self._plan = widgets.Button(description="Plan ticked", tooltip=_TOOLTIPS["Plan ticked"])
        self.clicks.bind(self._plan, self.plan_ticked)
        self.clicks.bind(self._unload_all, self.unload_all)
        self.clicks.bind(self._free, self.free_memory)
        self._plan_html = widgets.HTML()
        self._warmup = widgets.HTML()
        self._cap.observe(self._on_cap, names="value")
        self._keep_alive.observe(self._on_keep_alive, names="value")
        actions = widgets.HBox([self._unload_all, self._free, self._plan, self._cap, self._keep_alive],
                               layout=widgets.Layout(flex_flow="row wrap"))
        self._messages_html = widgets.HTML()
        self._events = widgets.HTML()
        events = widgets.Accordion([self._events], titles=("Events",))
        self._actions_box = actions
        self._events_box = events
        self.widget = widgets.VBox([self._title, self._warmup, self._devices, self._model_box, self._legend, actions,
                                    self._messages_html, self._plan_html, self._machine_html, events])
        self.clicks.follow([self._title, self._warmup, self._devices, self._machine_html, *self._header_cells,
                            self._model_box, self._legend, self._plan_html, actions, self._messages_html,
                            self._events, events, self.widget])
        self.clicks.follow_field(self._cap, "max models")
        self.clicks.follow_field(self._keep_alive, "keep-alive")

    def _all_widgets(self) -> list[Any]:
        found = [self._title, self._warmup, self._devices, self._machine_html, *self._header_cells, self._model_box,
                 self._legend, self._cap, self._keep_alive, self._unload_all, self._free, self._plan,
                 self._plan_html, self._actions_box, self._messages_html, self._events, self._events_box, self.widget]
        with self._lock:
            rows = list(self._rows.values())
        for row in rows:
            found.extend(row.widgets)
        return found

    # -- rendering (only the writer thread, or the constructor, calls these) ----------------

    def refresh(self, machine_age: float = 0.0) -> None:
        """Render a fresh snapshot (the machine's may be ``machine_age`` s old); only changed values are sent."""
        now = time.time()
        machine = self._machine.read(machine_age)  # never raises: a ledger failure shows as a note
        rows = self.manager.status()
        devices = self.manager.devices()
        events = self.manager.events(self.event_limit)
        with self._lock:
            pending = dict(self._pending)
            loading = dict(self._loading_since)
            messages = list(self._messages)
            plan = self._plan_text
        queued, hint = self.clicks.queued(), self.clicks.hint()
        warmup = self.manager.warmup.status
        shown = warmup.running or bool(warmup.failed)
        _apply(self._warmup, value=f"<div style='{MUTED}'>{text(str(warmup))}</div>" if shown else "")
        _apply(self._plan_html, value=plan)
        shown_rows = self._sync_rows([row.id for row in rows])
        gpus = [d for d in devices if d.device.startswith("cuda")]
        _apply(self._devices, value="".join(device_html(d, machine.others_on(d.device)) for d in devices)
               + ("" if gpus else no_gpu_note()))
        _apply(self._machine_html, value=machine_html(machine, now))
        table = status_table(rows, pending=pending, loading_since=loading, now=now).select(*_SHOWN)
        for row, cells in zip(rows, table.rows):
            for widget, values in shown_rows[row.id].values(row, cells, pending.get(row.id), queued, hint):
                _apply(widget, **values)
        _apply(self._events, value=f"<div style='font-size:smaller'>{events_table(events).html()}</div>")
        _apply(self._messages_html, value="".join(message_html(*m) for m in messages))
        _apply(self._cap, value=self._cap_text())
        _apply(self._keep_alive, value=self._keep_alive_text())
        nothing_loaded = not any(row.state == "loaded" for row in rows)
        for widget, values in (_button(self._unload_all, "Unload all", nothing_loaded or "" in pending, queued, hint),
                               _button(self._free, "Free memory", "" in pending, queued, hint),
                               _button(self._plan, "Plan ticked", "" in pending, queued, hint)):
            _apply(widget, **values)

    def _sync_rows(self, ids: list[str]) -> dict[str, _ModelRow]:
        """One row of widgets per id, in order (the writer's job); returns them by id."""
        with self._lock:
            rows = dict(self._rows)
        made = {m: _ModelRow(self._widgets_module, self, m) for m in ids if m not in rows}
        gone = [rows.pop(m) for m in [m for m in rows if m not in ids]]
        rows.update(made)
        with self._lock:  # other threads only read it (which models are ticked, close())
            self._rows = rows
        for row in gone:
            _close(row.widgets)
        cells = tuple(self._header_cells) + tuple(c for m in ids for c in rows[m].grid_cells)
        if tuple(self._model_box.children) != cells:
            self._model_box.children = cells
        return rows

    def _cap_text(self) -> str:
        cap = self.manager.max_loaded_models
        return "" if cap is None else str(cap)

    def _keep_alive_text(self) -> str:
        seconds = self.manager.keep_alive
        return "never" if seconds is None else f"{seconds:g}s" if seconds < 60 else format_duration(seconds)

    # -- the writer thread -----------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.refresh_interval)
            if self._stop.is_set():
                return
            self._wake.clear()
            try:
                self.refresh(machine_age=0.9 * self.refresh_interval)  # events reuse it; each tick reads anew
            except Exception as error:  # noqa: BLE001 - the writer thread must survive, and say so in one line
                log_failure(log, "the dashboard failed to refresh; it keeps running", error)

    def _say(self, message: str) -> None:
        """A line in the messages area, from any thread."""
        with self._lock:
            self._messages.append((time.time(), False, message))
        self._wake.set()

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if event.kind == "loading" and event.model_id:
                self._loading_since[event.model_id] = event.time
            elif event.kind in ("loaded", "load_failed") and event.model_id:
                self._loading_since.pop(event.model_id, None)
        self._wake.set()

    # -- actions ---------------------------------------------------------------------------

    def load(self, model_id: str) -> None:
        self._submit(model_id, "loading", lambda: actions.load(self.manager, model_id))

    def unload(self, model_id: str) -> None:
        self._submit(model_id, "unloading", lambda: actions.unload(self.manager, model_id))

    def toggle_pin(self, model_id: str) -> None:
        pinned = self.manager.row(model_id).pinned
        self._submit(model_id, "unpinning" if pinned else "pinning", lambda: actions.toggle_pin(self.manager, model_id))

    def plan_ticked(self) -> None:
        """Plan the ticked models (none ticked: the manager's default plan); the report shows below."""
        from .views.plan import plan_tables

        with self._lock:
            rows = list(self._rows.items())
        ticked = [model_id for model_id, row in rows if row.tick.value]

        def plan() -> str:
            report = self.manager.plan(ticked or None)
            with self._lock:
                self._plan_text = "".join(table.html() for table in plan_tables(report))
            return report.verdict

        self._submit(None, "planning", plan)

    def unload_all(self) -> None:
        self._submit(None, "unloading all", lambda: actions.unload_all(self.manager))

    def free_memory(self) -> None:
        self._submit(None, "collecting", lambda: actions.free_memory(self.manager))

    def _on_cap(self, change: dict[str, Any]) -> None:
        text = change["new"].strip()
        if text == self._cap_text():
            return
        value: int | str | None = int(text) if text.isdigit() else (text or None)  # a bad value: its error shown
        self._submit(None, "setting the cap", lambda: actions.configure(self.manager, "max_loaded_models", value))

    def _on_keep_alive(self, change: dict[str, Any]) -> None:
        text = change["new"].strip()
        if text and text != self._keep_alive_text():
            self._submit(None, "setting keep-alive", lambda: actions.configure(self.manager, "keep_alive", text))

    def _submit(self, model_id: str | None, what: str, call: Callable[[], str]) -> None:
        """Run a manager call off the comm thread; show it pending, then its outcome."""
        key = model_id or ""
        with self._lock:
            if key in self._pending:
                return  # a second click while the first is running
            self._pending[key] = what
        self._wake.set()

        def run() -> None:
            failed = True
            try:
                message, failed = call(), False
            except LLMManagerError as error:
                message = str(error)
            except Exception as error:  # noqa: BLE001 - a bug, not a user error: logged and shown in one line
                log_failure(log, f"dashboard action {what!r} failed", error)
                message = f"{type(error).__name__}: {error}"
            with self._lock:
                self._pending.pop(key, None)
                self._messages.append((time.time(), failed, message))
            self._wake.set()
            if not self.background:
                self.refresh()

        if not self.background:
            run()
            return
        thread = threading.Thread(target=run, name="llm-dashboard-action", daemon=True)
        with self._lock:
            self._actions = [t for t in self._actions if t.is_alive()] + [thread]
        thread.start()

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread, unsubscribe, and close every widget."""
        self._stop.set()
        self._wake.set()
        self._unsubscribe()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        with self._lock:
            actions = list(self._actions)
        for thread in actions:
            thread.join(_ACTION_JOIN_S)
        _close(self._all_widgets())  # the writer has stopped: this thread is the only one left to touch them
        with self._lock:
            self._rows = {}

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<Dashboard of {self.manager!r}{' (closed)' if self.closed else ''}>"


def _close(widgets: list[Any]) -> None:
    """Close widgets with their layout and style, which are widgets of their own."""
    for widget in widgets:
        for part in (getattr(widget, "layout", None), getattr(widget, "style", None), widget):
            if part is not None and hasattr(part, "close"):
                part.close()


def _apply(widget: Any, **values: Any) -> None:
    """Set only the traits whose value changed, in one message per widget."""
    changed = {name: value for name, value in values.items() if getattr(widget, name) != value}
    if not changed:
        return
    with widget.hold_sync():
        for name, value in changed.items():
            setattr(widget, name, value)
