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
  (:mod:`.dashboard_clicks`). Where a click waits for the running cell, its
  button says "runs when the cell finishes" as soon as the click arrives;
- a click runs its action (:mod:`.dashboard_actions`, over :mod:`.actions`,
  shared with the magics and JupyterLab) on a short-lived thread; the row
  shows what is pending, what it waits for, and the result. An Unload of a
  model in use waits for the answer to end, however long; a second click
  (the button then reads "Cancel") takes it back;
- every table comes from :mod:`.views` (the models' cells, "This machine", the
  events, a plan); the model grid (:mod:`.dashboard_rows`) leaves columns out,
  then shows cards, where the dashboard is narrow. "This machine" lists the
  other notebooks' models (:mod:`.machine_reader`), read by the writer at most
  every refresh interval; the device bars show what they hold;
- it holds model ids, never model objects. ``close()`` stops the thread,
  unsubscribes and closes every widget.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from ..errors import log_failure
from ..events import Event
from ..support.units import format_duration
from .dashboard_actions import DashboardActions
from .dashboard_clicks import Clicks
from .dashboard_html import message_html, no_gpu_note
from .dashboard_rows import GRID, SHOWN, TOOLTIPS, ModelRow, apply, button_values, close_widgets, grid_css, header_cells
from .machine_reader import MachineReader, server_root
from .views.devices import device_html
from .views.events import events_table
from .views.machine import machine_html
from .views.status import LEGEND, status_table
from .views.style import MUTED, WRAP, text

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

_DASHBOARDS = itertools.count(1)


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as error:  # raised when a dashboard is made, never at import
        raise ImportError("the dashboard needs ipywidgets: pip install ipywidgets") from error
    return ipywidgets


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
        self._loading_since: dict[str, float] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._rows: dict[str, ModelRow] = {}
        self._scope = f"jlm-dashboard-{next(_DASHBOARDS)}"  # the class its styles are scoped to
        self.actions = DashboardActions(manager, self._wake.set, background=background, after=self.refresh)
        self.clicks = Clicks(self._wake.set, self.actions.say)
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
        self._header_cells = header_cells(widgets)
        self._model_box = widgets.GridBox(self._header_cells, layout=widgets.Layout(
            grid_template_columns=GRID, grid_gap="2px 10px", align_items="center", width="100%"))
        self._legend = widgets.HTML(f"<div style='{MUTED}; font-size:smaller; {WRAP}'>{LEGEND}</div>")
        self._cap = widgets.Text(description="Max models", value=self._cap_text(), placeholder="no cap",
                                 layout=widgets.Layout(width="12em"), continuous_update=False,
                                 tooltip="how many models may be loaded at once; empty: no cap")
        self._keep_alive = widgets.Text(description="Keep-alive", value=self._keep_alive_text(),
                                        layout=widgets.Layout(width="14em"), continuous_update=False,
                                        placeholder="10m, 1h, never")
        self._unload_all = widgets.Button(description="Unload all", button_style="warning")
        self._free = widgets.Button(description="Free memory", tooltip=TOOLTIPS["Free memory"])
        self._plan = widgets.Button(description="Plan ticked", tooltip=TOOLTIPS["Plan ticked"])
        self.clicks.bind(self._plan, self.plan_ticked)
        self.clicks.bind(self._unload_all, self.actions.unload_all)
        self.clicks.bind(self._free, self.actions.free_memory)
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
        self._style = widgets.HTML()  # the grid's container queries (:func:`.dashboard_rows.grid_css`)
        self._model_box.add_class("jlm-models")
        self.widget = widgets.VBox([self._style, self._title, self._warmup, self._devices, self._model_box,
                                    self._legend, actions, self._messages_html, self._plan_html, self._machine_html,
                                    events])
        self.widget.add_class(self._scope)
        self.clicks.follow([self._style, self._title, self._warmup, self._devices, self._machine_html,
                            *self._header_cells, self._model_box, self._legend, self._plan_html, actions,
                            self._messages_html, self._events, events, self.widget])
        self.clicks.follow_field(self._cap, "max models")
        self.clicks.follow_field(self._keep_alive, "keep-alive")

    def _all_widgets(self) -> list[Any]:
        found = [self._style, self._title, self._warmup, self._devices, self._machine_html, *self._header_cells, self._model_box,
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
        pending, messages, plan = self.actions.state()
        with self._lock:
            loading = dict(self._loading_since)
        queued, hint = self.clicks.queued(), self.clicks.hint()
        warmup = self.manager.warmup.status
        shown = warmup.running or bool(warmup.failed)
        apply(self._warmup, value=f"<div style='{MUTED}'>{text(str(warmup))}</div>" if shown else "")
        apply(self._plan_html, value=plan)
        shown_rows = self._sync_rows([row.id for row in rows])
        gpus = [d for d in devices if d.device.startswith("cuda")]
        apply(self._devices, value="".join(device_html(d, machine.others_on(d.device)) for d in devices)
               + ("" if gpus else no_gpu_note()))
        apply(self._machine_html, value=machine_html(machine, now, server_root()))
        table = status_table(rows, pending=pending, loading_since=loading, now=now).select(*SHOWN)
        apply(self._style, value=f"<style>{grid_css(self._scope, table)}</style>")
        for row, cells in zip(rows, table.rows):
            for widget, values in shown_rows[row.id].values(row, cells, pending.get(row.id), queued, hint):
                apply(widget, **values)
        apply(self._events, value=f"<div style='font-size:smaller'>{events_table(events).html()}</div>")
        apply(self._messages_html, value="".join(message_html(*m) for m in messages))
        apply(self._cap, value=self._cap_text())
        apply(self._keep_alive, value=self._keep_alive_text())
        nothing_loaded = not any(row.state == "loaded" for row in rows)
        for widget, values in (button_values(self._unload_all, "Unload all", nothing_loaded or "" in pending, queued, hint),
                               button_values(self._free, "Free memory", "" in pending, queued, hint),
                               button_values(self._plan, "Plan ticked", "" in pending, queued, hint)):
            apply(widget, **values)

    def _sync_rows(self, ids: list[str]) -> dict[str, ModelRow]:
        """One row of widgets per id, in order (the writer's job); returns them by id."""
        with self._lock:
            rows = dict(self._rows)
        made = {m: self._row(m) for m in ids if m not in rows}
        gone = [rows.pop(m) for m in [m for m in rows if m not in ids]]
        rows.update(made)
        with self._lock:  # other threads only read it (which models are ticked, close())
            self._rows = rows
        for row in gone:
            close_widgets(row.widgets)
        cells = tuple(self._header_cells) + tuple(c for m in ids for c in rows[m].grid_cells)
        if tuple(self._model_box.children) != cells:
            self._model_box.children = cells
        return rows

    def _row(self, model_id: str) -> ModelRow:
        return ModelRow(self._widgets_module, self.clicks, {"load": lambda: self.actions.load(model_id),
                                                            "unload": lambda: self.actions.unload(model_id),
                                                            "pin": lambda: self.actions.toggle_pin(model_id)})

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

    def _on_event(self, event: Event) -> None:
        with self._lock:
            if event.kind == "loading" and event.model_id:
                self._loading_since[event.model_id] = event.time
            elif event.kind in ("loaded", "load_failed") and event.model_id:
                self._loading_since.pop(event.model_id, None)
        self._wake.set()

    # -- actions (:mod:`.dashboard_actions`) --------------------------------------------------

    def plan_ticked(self) -> None:
        """Plan the ticked models (none ticked: the manager's default plan); the report shows below."""
        with self._lock:
            rows = list(self._rows.items())
        self.actions.plan([model_id for model_id, row in rows if row.tick.value])

    def _on_cap(self, change: dict[str, Any]) -> None:
        text = change["new"].strip()
        if text == self._cap_text():
            return
        value: int | str | None = int(text) if text.isdigit() else (text or None)  # a bad value: its error shown
        self.actions.configure("max_loaded_models", value, "setting the cap")

    def _on_keep_alive(self, change: dict[str, Any]) -> None:
        text = change["new"].strip()
        if text and text != self._keep_alive_text():
            self.actions.configure("keep_alive", text, "setting keep-alive")

    # -- lifetime ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the thread, unsubscribe, and close every widget."""
        self._stop.set()
        self._wake.set()
        self._unsubscribe()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(10)
        self.actions.close()
        close_widgets(self._all_widgets())  # the writer has stopped: this thread is the only one left to touch them
        with self._lock:
            self._rows = {}

    @property
    def closed(self) -> bool:
        return self._stop.is_set()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return f"<Dashboard of {self.manager!r}{' (closed)' if self.closed else ''}>"
