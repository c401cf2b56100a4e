"""The models dashboard: devices, models, actions and events, live, in an ipywidgets panel.

Open it with ``%llm dashboard`` or ``jupyter_llm_manager.open_dashboard()``. It turns manager snapshots into widget values and clicks
into manager calls, nothing more:

- one background thread is the only writer of widget state. Manager events
  wake it at once; device figures are refreshed about every two seconds.
  Only values that changed are sent, a widget's changes batched with
  ``hold_sync``, and system memory is rounded, so an idle dashboard sends no
  message;
- a click runs its action (:mod:`.actions`, shared with the magics and
  JupyterLab) on a short-lived thread (the kernel may be busy with a cell);
  the row shows what is pending and the result;
- it holds model ids, never model objects. ``close()`` stops the thread,
  unsubscribes and closes every widget.
"""

from __future__ import annotations

import html
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import LLMManagerError, log_failure
from ..events import Event
from ..reports import StatusRow
from ..support.heavy_imports import ready
from ..support.units import format_bytes, format_duration
from . import actions

if TYPE_CHECKING:
    from ..manager.facade import LLMManager

__all__ = ["Dashboard"]

log = logging.getLogger(__name__)

# One grid for the header and every row, so columns stay aligned at any width (a side panel too).
_COLUMNS = (("model", "minmax(5em, 2fr)"), ("state", "minmax(5em, 1.5fr)"), ("device", "minmax(3em, 0.6fr)"),
            ("memory", "minmax(5em, 1.6fr)"), ("last use", "minmax(3em, 0.8fr)"),
            ("keep-alive", "minmax(3em, 0.8fr)"), ("", "fit-content(17em)"))  # buttons stack when narrow
_GRID = " ".join(width for _, width in _COLUMNS)
_WRAP = "overflow-wrap: anywhere"
_SIZES = {"weights": "measured after the load: what the model's tensors take (llama.cpp models: also their KV "
                     "cache and buffers, as llama.cpp reports them)",
          "needs": "estimated before loading, from metadata: weights + KV cache + overhead",
          "reserved": "what this kernel counts against the budget for its loaded models: measured weights + "
                      "the KV cache and overhead of their estimates"}
_LEGEND = " · ".join(f"<b>{name}</b>: {text}" for name, text in _SIZES.items())
_MUTED = "color: var(--jp-ui-font-color2, #777)"
_HELD, _OTHERS, _BUDGET = "#3b82f6", "#a3a3a3", "#dc2626"
_ACTION_JOIN_S = actions.ACTION_WAIT_S + 5.0


def _text(value: str) -> str:
    """Escape for an HTML text node (quotes need no escaping there and stay readable)."""
    return html.escape(value, quote=False)


def _ipywidgets() -> Any:
    try:
        import ipywidgets
    except ImportError as error:  # raised when a dashboard is made, never at import
        raise ImportError("the dashboard needs ipywidgets: pip install ipywidgets") from error
    return ipywidgets


def _coarse(value: int) -> str:
    """System-wide used bytes, rounded so that its constant small changes do not re-render the dashboard."""
    if value >= 10**9:
        return format_bytes(round(value / 10**8) * 10**8)
    return format_bytes(round(value / 10**7) * 10**7)


def _device_html(device: Any) -> str:
    total = max(device.total_bytes, 1)
    held = round(100 * min(device.held_bytes, total) / total)
    others = round(100 * max(device.used_bytes - device.held_bytes, 0) / total)
    budget = round(100 * min(device.budget_bytes, total) / total)
    bar = (
        f"<div style='position:relative; flex:1; height:14px; background:var(--jp-layout-color3, #eee);"
        f" border-radius:3px; overflow:hidden; min-width:8em'>"
        f"<div title='reserved for this kernel&#39;s models' style='position:absolute; left:0; width:{held}%;"
        f" height:100%; background:{_HELD}'></div>"
        f"<div title='used by others' style='position:absolute; left:{held}%; width:{others}%; height:100%;"
        f" background:{_OTHERS}'></div>"
        f"<div title='budget' style='position:absolute; left:{budget}%; top:0; bottom:0; width:2px;"
        f" background:{_BUDGET}'></div></div>")
    text = (f"{_coarse(device.used_bytes)} of {device.total_str} used · <span title='{_SIZES['reserved']}'>"
            f"{_text(device.held_str)} reserved</span> for models · budget {device.budget_str}")
    return (f"<div style='display:flex; flex-wrap:wrap; align-items:center; gap:0.2em 0.6em'>"
            f"<div style='min-width:10em'><b>{_text(device.device)}</b> "
            f"<span style='{_MUTED}'>{_text(device.name)}</span></div>{bar}"
            f"<div style='{_WRAP}'>{text}</div></div>")


def _no_gpu_note() -> str:
    from ..devices import nvml_error

    reason = nvml_error() or "no NVIDIA GPU reported"
    torch = ready("torch")
    if torch is not None and not torch.cuda.is_available():
        reason += f"; torch {torch.__version__} sees no CUDA device"
    return (f"<div style='{_MUTED}'>No GPU visible to this kernel ({_text(reason)}). Models run on the CPU; "
            "run <code>jupyter-llm-manager doctor</code> to see why.</div>")


def _state_html(row: StatusRow, pending: str | None, loading_since: float | None, now: float) -> str:
    if pending:
        return f"<i>{_text(pending)}…</i>"
    if row.state == "loading":
        elapsed = f" {format_duration(now - loading_since)}" if loading_since else ""
        doing = f"<div style='{_MUTED}; font-size:smaller'>{_text(row.progress)}</div>" if row.progress else ""
        return f"<progress style='width:4em'></progress> loading{elapsed}{doing}"
    if row.state == "failed":
        return f"<span style='color:{_BUDGET}' title='{html.escape(row.error or '')}'>failed</span>"
    if row.state == "waiting":
        return f"<span title='{html.escape(row.waiting_for or '')}'>waiting (#{row.queue_position or 1})</span>"
    notes = [n for flag, n in ((row.in_use, f"in use ({row.in_use})"), (row.pinned, "pinned"),
                               (row.reachable is False, "unreachable")) if flag]
    return _text(row.state + (f" · {', '.join(notes)}" if notes else ""))


def _memory_html(row: StatusRow) -> str:
    """The model's sizes, each named: measured weights, and what it needs (the estimate)."""
    if row.remote:
        return "remote"
    parts = [(name, value) for name, value in (("weights", row.actual_str), ("needs", row.estimated_str)) if value]
    return " · ".join(f"<span title='{_SIZES[name]}'>{name} {_text(value)}</span>" for name, value in parts) or "?"


def _name_html(row: StatusRow) -> str:
    aliases = f" <span style='{_MUTED}'>({_text(', '.join(row.aliases))})</span>" if row.aliases else ""
    badges = ""
    if row.trust_remote_code:
        badges += f" <span title='runs code from its repository' style='color:{_BUDGET}'>⚠ remote code</span>"
    facts = [str(row.details.get(k)) for k in ("endpoint", "latency_str", "last_error") if row.details.get(k)]
    if row.context and not row.remote:
        facts.append(f"context {row.context:,} tokens")
    if row.mode == "embed":
        facts.append("embeddings")
    details = f"<div style='{_MUTED}; font-size:smaller'>{_text(' · '.join(facts))}</div>" if facts else ""
    if row.error and (row.state in ("failed", "registered") or row.reachable is False):
        details += f"<div style='color:{_BUDGET}; font-size:smaller'>{_text(row.error[:200])}</div>"
    return f"<div style='{_WRAP}'><b>{_text(row.id)}</b>{aliases}{badges}{details}</div>"


def _event_html(events: list[Event]) -> str:
    rows = "".join(
        f"<tr><td>{time.strftime('%H:%M:%S', time.localtime(e.time))}</td><td>{_text(e.model_id or '')}</td>"
        f"<td>{_text(e.kind + (f' ({e.reason})' if e.reason else ''))}</td>"
        f"<td>{f'{e.seconds:.2f} s' if e.seconds is not None else ''}</td><td>{_text(e.bytes_str)}</td>"
        f"<td>{_text(e.message[:300])}</td></tr>" for e in reversed(events))
    return ("<table style='font-size:smaller'><thead><tr><th>time</th><th>model</th><th>what</th><th>seconds</th>"
            f"<th>bytes</th><th>message</th></tr></thead><tbody>{rows}</tbody></table>")


def _message_html(when: float, failed: bool, text: str) -> str:
    color = f"color:{_BUDGET}" if failed else _MUTED
    return (f"<div style='{color}; white-space:pre-wrap'>{time.strftime('%H:%M:%S', time.localtime(when))} "
            f"{_text(text)}</div>")


class _ModelRow:
    """The widgets of one model id: its cells in the grid, and its Load / Unload / Pin buttons."""

    def __init__(self, widgets: Any, dashboard: Dashboard, model_id: str) -> None:
        self.cells = [widgets.HTML(layout=widgets.Layout(min_width="0")) for _ in _COLUMNS[:-1]]
        self.load = widgets.Button(description="Load", layout=widgets.Layout(width="auto"))
        self.unload = widgets.Button(description="Unload", layout=widgets.Layout(width="auto"))
        self.pin = widgets.Button(description="Pin", layout=widgets.Layout(width="auto"))
        self.tick = widgets.Checkbox(value=False, indent=False, description="plan",
                                     layout=widgets.Layout(width="auto"))  # ticked models: "Plan ticked"
        self.load.on_click(lambda _: dashboard.load(model_id))
        self.unload.on_click(lambda _: dashboard.unload(model_id))
        self.pin.on_click(lambda _: dashboard.toggle_pin(model_id))
        self.buttons = widgets.HBox([self.load, self.unload, self.pin, self.tick],
                                    layout=widgets.Layout(flex_flow="row wrap", width="auto"))

    @property
    def grid_cells(self) -> list[Any]:
        return [*self.cells, self.buttons]

    @property
    def widgets(self) -> list[Any]:
        return [*self.cells, self.load, self.unload, self.pin, self.tick, self.buttons]

    def values(self, row: StatusRow, pending: str | None, loading_since: float | None,
               now: float) -> list[tuple[Any, dict[str, Any]]]:
        texts = [_name_html(row), _state_html(row, pending, loading_since, now),
                 _text(row.device), _memory_html(row), _text(row.last_used_str()),
                 _text(row.expires_in_str())]
        busy = bool(pending) or row.state == "loading"
        return [*((cell, {"value": text}) for cell, text in zip(self.cells, texts)),
                (self.load, {"disabled": busy or row.state == "loaded"}),
                (self.unload, {"disabled": busy or row.state != "loaded"}),
                (self.pin, {"description": "Unpin" if row.pinned else "Pin", "disabled": bool(pending)})]


class Dashboard:
    """A live panel of this kernel's devices, models and events (see the module docstring).

    ``background=False`` runs no thread: clicks call the manager at once and
    :meth:`refresh` renders (for tests and scripted use).
    """

    def __init__(self, manager: LLMManager | None = None, *, refresh_interval: float = 2.0,
                 event_limit: int = 50, background: bool = True) -> None:
        widgets = _ipywidgets()
        if manager is None:
            from ..manager.facade import get_manager

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
        self._devices = widgets.HTML()
        self._header_cells = [widgets.HTML(f"<span style='{_MUTED}'>{name}</span>") for name, _ in _COLUMNS]
        self._model_box = widgets.GridBox(self._header_cells, layout=widgets.Layout(
            grid_template_columns=_GRID, grid_gap="2px 10px", align_items="center", width="100%"))
        self._legend = widgets.HTML(f"<div style='{_MUTED}; font-size:smaller; {_WRAP}'>{_LEGEND}</div>")
        self._cap = widgets.Text(description="Max models", value=self._cap_text(), placeholder="no cap",
                                 layout=widgets.Layout(width="12em"), continuous_update=False,
                                 tooltip="how many models may be loaded at once; empty: no cap")
        self._keep_alive = widgets.Text(description="Keep-alive", value=self._keep_alive_text(),
                                        layout=widgets.Layout(width="14em"), continuous_update=False,
                                        placeholder="10m, 1h, never")
        self._unload_all = widgets.Button(description="Unload all", button_style="warning")
        self._free = widgets.Button(description="Free memory", tooltip="collect garbage, empty the CUDA cache")
        self._plan = widgets.Button(description="Plan ticked", tooltip="would the ticked models fit together? "
                                    "(none ticked: each task's selected option) Loads nothing")
        self._plan.on_click(lambda _: self.plan_ticked())
        self._plan_html = widgets.HTML()
        self._warmup = widgets.HTML()
        self._unload_all.on_click(lambda _: self.unload_all())
        self._free.on_click(lambda _: self.free_memory())
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
                                    self._messages_html, self._plan_html, events])

    def _all_widgets(self) -> list[Any]:
        found = [self._title, self._warmup, self._devices, *self._header_cells, self._model_box, self._legend,
                 self._cap, self._keep_alive, self._unload_all, self._free, self._plan, self._plan_html,
                 self._actions_box, self._messages_html,
                 self._events, self._events_box, self.widget]
        with self._lock:
            rows = list(self._rows.values())
        for row in rows:
            found.extend(row.widgets)
        return found

    # -- rendering (only the writer thread, or the constructor, calls these) ----------------

    def refresh(self) -> None:
        """Render a fresh snapshot; only values that changed are sent to the front-end."""
        now = time.time()
        rows = self.manager.status()
        devices = self.manager.devices()
        events = self.manager.events(self.event_limit)
        with self._lock:
            pending = dict(self._pending)
            loading = dict(self._loading_since)
            messages = list(self._messages)
            plan = self._plan_text
        warmup = self.manager.warmup.status
        shown = warmup.running or bool(warmup.failed)
        _apply(self._warmup, value=f"<div style='{_MUTED}'>{_text(str(warmup))}</div>" if shown else "")
        _apply(self._plan_html, value=plan)
        shown_rows = self._sync_rows([row.id for row in rows])
        gpus = [d for d in devices if d.device.startswith("cuda")]
        devices_html = "".join(_device_html(d) for d in devices) + ("" if gpus else _no_gpu_note())
        _apply(self._devices, value=devices_html)
        for row in rows:
            for widget, values in shown_rows[row.id].values(row, pending.get(row.id), loading.get(row.id), now):
                _apply(widget, **values)
        _apply(self._events, value=_event_html(events))
        _apply(self._messages_html, value="".join(_message_html(*m) for m in messages))
        _apply(self._cap, value=self._cap_text())
        _apply(self._keep_alive, value=self._keep_alive_text())
        nothing_loaded = not any(row.state == "loaded" for row in rows)
        _apply(self._unload_all, disabled=nothing_loaded or "" in pending)

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
                self.refresh()
            except Exception as error:  # noqa: BLE001 - the writer thread must survive, and say so in one line
                log_failure(log, "the dashboard failed to refresh; it keeps running", error)

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
        from .plan_tables import plan_tables

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
