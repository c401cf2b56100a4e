"""The dashboard by its widget state: no browser, a recording comm counts the messages."""

from __future__ import annotations

import gc
import re
import sys
import threading
import time
from typing import ClassVar

import comm
import pytest
from ipywidgets.widgets import widget as widget_module
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, FakeBackend, FakeDevices, count_unloads, fake, lease_elsewhere

import jupyter_llm_manager
from jupyter_llm_manager import LLMManager, ModelLoadingError
from jupyter_llm_manager.frontends.dashboard import Dashboard
from jupyter_llm_manager.frontends.kernel_comms import CellWatch, follow_frontend


class RecordingComm(comm.DummyComm):
    sent: ClassVar[list] = []

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        RecordingComm.sent.append((msg_type, data))


@pytest.fixture(autouse=True)
def recording_comm(monkeypatch):
    RecordingComm.sent = []
    monkeypatch.setattr(comm, "create_comm", lambda *args, **kwargs: RecordingComm(*args, **kwargs))
    return RecordingComm


@pytest.fixture
def manager(make_manager, backend):
    manager = make_manager(max_loaded_models=2)
    for model_id in ("a", "b", "c"):
        fake(manager, model_id)
    manager.alias("chat", "a")
    manager.backend = backend
    return manager


@pytest.fixture
def board(manager):
    dashboard = Dashboard(manager, background=False)
    yield dashboard
    dashboard.close()


def row_text(dashboard, model_id):
    return " | ".join(cell.value for cell in dashboard._rows[model_id].cells)


def state(dashboard, model_id):
    return dashboard._rows[model_id].cells[1].value


def test_rows_show_every_model_with_aliases_and_devices_show_bars(board):
    assert list(board._rows) == ["a", "b", "c"]
    assert "(chat)" in row_text(board, "a") and state(board, "a") == "registered"
    assert "cuda:0" in board._devices.value and "budget" in board._devices.value
    assert "No GPU visible" not in board._devices.value


def test_buttons_call_the_manager(board, manager):
    board._rows["a"].load.click()
    assert manager.row("a").state == "loaded" and state(board, "a").startswith("loaded")
    assert board._rows["a"].load.disabled and not board._rows["a"].unload.disabled
    board._rows["a"].pin.click()
    assert manager.row("a").pinned and board._rows["a"].pin.description == "Unpin"
    board._rows["a"].pin.click()
    assert not manager.row("a").pinned
    board._rows["a"].unload.click()
    assert manager.row("a").state == "registered" and "Unloaded 'a'" in board._messages_html.value
    board._rows["b"].load.click()
    board._unload_all.click()
    assert all(r.state == "registered" for r in manager.status())
    board._free.click()
    assert "No unloaded model was waiting to be freed" in board._messages_html.value


def test_settings_are_editable_in_place(board, manager):
    board._cap.value = "1"
    assert manager.max_loaded_models == 1
    board._keep_alive.value = "15m"
    assert manager.keep_alive == 900
    board._keep_alive.value = "soon"
    assert "expected a duration" in board._messages_html.value and manager.keep_alive == 900
    board._cap.value = "zero"
    assert "max_loaded_models" in board._messages_html.value and manager.max_loaded_models == 1
    board._cap.value = ""  # empty: no cap, shown as the placeholder, never as "0"
    assert manager.max_loaded_models is None and board._cap.value == "" and board._cap.placeholder == "no cap"


def test_unload_all_is_disabled_with_nothing_loaded_and_sizes_are_named(board, manager):
    board.refresh()
    assert board._unload_all.disabled
    manager.load("a")
    board.refresh()
    assert not board._unload_all.disabled
    (row,) = [r for r in board._rows.values() if "weights" in r.cells[3].value]
    assert "needs" in row.cells[3].value and "title=" in row.cells[3].value
    assert "reserved" in board._devices.value and "KV cache" in board._legend.value


def test_the_header_and_every_row_share_one_grid(board, manager):
    manager.load("a")
    board.refresh()
    grid = board._model_box
    columns = grid.layout.grid_template_columns.split(" minmax")
    assert len(board._header_cells) == len(next(iter(board._rows.values())).grid_cells) == 7
    assert len(grid.children) == 7 * (1 + len(board._rows)) and len(columns) >= 6


def test_rows_follow_loads_evictions_and_failures(board, manager, clock):
    for model_id in ("a", "b"):
        manager.load(model_id)
        clock.advance(1)
    manager.load("c")  # the cap of 2 evicts 'a'
    manager.register("broken", "fake/broken", backend="fake", options={"fail": "error"})
    with pytest.raises(ModelLoadingError):
        manager.load("broken")
    board.refresh()
    assert state(board, "a") == "registered" and state(board, "c").startswith("loaded")
    assert "failed" in state(board, "broken") and "fake failure" in row_text(board, "broken")
    events = board._events.value
    assert "evicted (lru)" in events and "load_failed" in events and "fake failure" in events


def test_the_background_thread_follows_events_live(manager):
    dashboard = Dashboard(manager, refresh_interval=60)  # only events can wake it within the test
    try:
        changed = threading.Event()
        dashboard._rows["b"].cells[1].observe(
            lambda change: changed.set() if change["new"].startswith("loaded") else None, names="value")
        manager.load("b")
        assert changed.wait(10)
    finally:
        dashboard.close()
    assert not dashboard._thread.is_alive()


def test_an_idle_refresh_sends_no_message(board, recording_comm, manager):
    manager.load("a")
    board.refresh()
    recording_comm.sent.clear()
    for _ in range(3):
        board.refresh()
    assert recording_comm.sent == []
    manager.unload("a")
    board.refresh()
    assert 0 < len(recording_comm.sent) <= 8  # a change sends a few batched messages, not a flood


def test_no_widget_or_thread_leaks_over_twenty_open_close_cycles(manager):
    gc.collect()
    widgets_before = len(widget_module._instances)
    for _ in range(20):
        dashboard = Dashboard(manager)
        dashboard._rows["a"].load.click()
        dashboard.close()
    manager.unload_all(wait=5)
    gc.collect()
    assert len(widget_module._instances) == widgets_before
    assert not [t for t in threading.enumerate() if t.name.startswith("llm-dashboard") and t.is_alive()]


def test_several_dashboards_stay_consistent(manager):
    first, second = Dashboard(manager, background=False), Dashboard(manager, background=False)
    try:
        first._rows["b"].load.click()
        second.refresh()
        assert state(second, "b").startswith("loaded")
        second._rows["b"].unload.click()
        first.refresh()
        assert state(first, "b") == "registered" == state(second, "b")
    finally:
        first.close()
        second.close()


def test_it_holds_ids_never_models(board, manager):
    board._rows["a"].load.click()
    board.refresh()
    report = manager.unload("a")
    assert report.collected


def test_unload_of_a_model_that_is_generating_waits_for_its_lease(manager):
    dashboard = Dashboard(manager, refresh_interval=60)
    worker, release = lease_elsewhere(manager, "a")  # a cell generating
    try:
        unloaded = threading.Event()
        manager.subscribe(lambda e: unloaded.set() if (e.kind, e.model_id) == ("unloaded", "a") else None)
        shown_pending = threading.Event()
        dashboard._rows["a"].cells[1].observe(  # says what it waits for, not only "unloading"
            lambda change: shown_pending.set() if "unloading" in change["new"] and "in use (1 use" in change["new"]
            and "unloads when the answer ends" in change["new"] else None, names="value")
        dashboard._rows["a"].unload.click()
        assert shown_pending.wait(10)  # the row says it is waiting
        assert manager.row("a").state == "loaded"
        release.set()
        assert unloaded.wait(10)
    finally:
        release.set()
        worker.join()
        dashboard.close()


def test_a_waiting_unload_has_no_time_limit_and_a_second_click_takes_it_back(make_manager, monkeypatch):
    from jupyter_llm_manager.frontends import actions

    monkeypatch.setattr(actions, "ACTION_WAIT_S", 0.2)  # not a button's limit any more
    manager = make_manager(clock=time.monotonic)
    fake(manager, "a", GB)
    dashboard = Dashboard(manager, refresh_interval=60)
    worker, release = lease_elsewhere(manager, "a")  # a cell generating
    try:
        tries = count_unloads(manager, monkeypatch)
        row = dashboard._rows["a"]
        row.unload.click()
        until(lambda: row.unload.description == "Cancel" and not row.unload.disabled, timeout=10)
        until(lambda: tries[-1] - tries[0] > 3 * actions.ACTION_WAIT_S)  # past the old limit: still waiting
        assert "unloads when the answer ends" in row.cells[1].value and manager.row("a").state == "loaded"
        row.unload.click()  # the second click takes it back
        until(lambda: "cancelled: it stays loaded" in dashboard._messages_html.value, timeout=10)
        until(lambda: row.unload.description == "Unload", timeout=10)
        assert manager.row("a").state == "loaded" and "wait=" not in dashboard._messages_html.value
    finally:
        release.set()
        worker.join()
        dashboard.close()


def test_the_model_grid_leaves_columns_out_then_shows_cards_where_it_is_narrow(board, manager):
    import re

    board.refresh()
    css = board._style.value
    widths = [float(w) for w in re.findall(r"@container \(max-width: ([\d.]+)em\)", css)]
    assert len(widths) == 2 and widths[0] > widths[1]  # first the last use and keep-alive go, then cards
    scope = next(c for c in board.widget._dom_classes if c.startswith("jlm-dashboard-"))
    assert f".{scope} {{ container-type: inline-size }}" in css and "jlm-models" in board._model_box._dom_classes
    row = board._rows["a"]
    assert [c._dom_classes for c in row.grid_cells] == [(f"jlm-col-{i}",) for i in range(len(row.grid_cells))]
    fake(manager, "a-model-with-a-much-longer-name", GB)
    board.refresh()
    assert float(re.findall(r"max-width: ([\d.]+)em", board._style.value)[0]) > widths[0]  # the ids count


def test_a_plain_note_when_there_is_no_gpu(clock):
    devices = FakeDevices({"cpu": 8 * GB})
    backend = FakeBackend(devices, kinds={"cpu"})
    manager = LLMManager(config_path=False, preload=False, device_probe=devices,
                         backend_factory=lambda name: backend, clock=clock)
    dashboard = Dashboard(manager, background=False)
    try:
        assert "No GPU visible to this kernel" in dashboard._devices.value and "cpu" in dashboard._devices.value
    finally:
        dashboard.close()
        manager.close()


def test_open_dashboard_from_the_package_and_the_module_stays_a_module(manager):
    import types

    assert type(sys.modules["jupyter_llm_manager.frontends.dashboard"]) is types.ModuleType
    dashboard = jupyter_llm_manager.open_dashboard(manager, background=False)
    try:
        assert isinstance(dashboard, Dashboard)
        bundle = dashboard._repr_mimebundle_()
        assert "application/vnd.jupyter.widget-view+json" in bundle
    finally:
        dashboard.close()


def test_plan_ticked_shows_whether_the_ticked_models_fit_together(manager, board):
    manager.max_loaded_models = 3
    manager.memory_budget = {"cuda:0": 2 * GB}
    board._rows["a"].tick.value = True
    board._rows["b"].tick.value = True
    board.plan_ticked()
    assert "Fits, without evicting anything." in board._plan_html.value and "how estimated" in board._plan_html.value
    board._rows["c"].tick.value = True
    board.plan_ticked()
    assert "Does not fit together" in board._plan_html.value
    assert all(row.state == "registered" for row in manager.status())  # planning loads nothing


def test_the_warm_up_shows_while_it_runs_and_when_it_failed(manager, board):
    manager.register("broken", "fake/broken", backend="fake", device="cuda:0", options={"fail": "error"})
    manager.warmup.start(["a", "broken"])
    assert manager.warmup.wait(10)
    board.refresh()
    assert "warm-up 2/2" in board._warmup.value and "failed: broken" in board._warmup.value


def test_the_events_table_puts_each_header_over_its_values(manager, board):
    manager.load("a")
    manager.unload("a")
    board.refresh()
    table = board._events.value
    headers = re.findall(r"<th [^>]*style='([^']*)'>([^<]*)</th>", table)
    first_row = re.search(r"<tr><td.*?</tr>", table).group(0)
    cells = re.findall(r"<td [^>]*style='([^']*)'>", first_row)
    assert [name for _, name in headers] == ["time", "model", "what", "seconds", "bytes", "message"]
    assert len(cells) == len(headers)  # one value under each header
    assert all("text-align:left" in style for style, _ in headers)
    assert all("text-align:left" in style for style in cells)  # aligned alike: the header sits over its values


class RoutedComm:
    """What ipykernel >= 7.3 gives a comm: ``_reply_subshell_for(data, frontend_choice)`` picks its shell."""

    def _reply_subshell_for(self, data, frontend_choice):
        return None  # ipykernel's own choice: the shell that last published on the comm (the main one)


def test_a_comm_follows_the_frontends_routing_and_a_click_for_the_busy_main_shell_is_noted_at_once():
    channel, noted, cells = RoutedComm(), [], CellWatch(busy=True)
    assert follow_frontend(channel, noted.append, cells)
    click = {"method": "custom", "content": {"event": "click"}}
    assert channel._reply_subshell_for(click, "subshell-1") == "subshell-1"  # sent on a subshell: handled there
    assert noted == []
    assert channel._reply_subshell_for(click, None) is None and noted == [click]  # waits for the cell: said so
    idle = RoutedComm()
    follow_frontend(idle, noted.append, CellWatch(busy=False))
    assert idle._reply_subshell_for(click, None) is None and noted == [click]  # no cell runs: nothing to say
    assert not follow_frontend(object(), noted.append, cells)  # an older ipykernel: nothing to change


def test_a_click_that_waits_for_the_cell_shows_on_its_button_until_it_runs(manager, monkeypatch):
    import jupyter_llm_manager.frontends.dashboard_clicks as dashboard_module

    routed: list = []
    monkeypatch.setattr(dashboard_module, "follow_frontend",
                        lambda channel, on_queued=None, watch=None: routed.append(on_queued) or True)
    monkeypatch.setattr(dashboard_module, "cell_watch", lambda: CellWatch(busy=True))
    board = Dashboard(manager, background=False)
    try:
        pin = board._rows["a"].pin
        waiting = [f for f in routed if f is not None]
        for on_queued in waiting:  # a click reaches the kernel's reader thread for each button
            on_queued({"method": "custom", "content": {"event": "click"}})
        board.refresh()
        assert "runs when the cell finishes" in pin.description and pin.disabled
        pin.click()  # the cell ended: the click runs
        board.refresh()
        assert pin.description == "Unpin" and manager.row("a").pinned
    finally:
        board.close()


def test_on_a_kernel_without_subshells_every_button_says_while_a_cell_runs_that_clicks_wait(manager, monkeypatch):
    import jupyter_llm_manager.frontends.dashboard_clicks as dashboard_module

    cells = CellWatch(busy=True)
    monkeypatch.setattr(dashboard_module, "clicks_wait_for_cells", lambda: True)  # ipykernel < 7
    monkeypatch.setattr(dashboard_module, "cell_watch", lambda: cells)
    board = Dashboard(manager, background=False)
    try:
        buttons = [board._rows["a"].pin, board._rows["a"].load, board._free]
        assert all("runs when the cell finishes" in (b.tooltip or "") for b in buttons)
        cells._finished()  # the cell ended (on the main thread): clicks act at once again
        board.refresh()
        assert not any("runs when the cell finishes" in (b.tooltip or "") for b in buttons)
    finally:
        board.close()


# -- this machine: the other notebooks' models, and adapters' bases ------------------------------------------


@pytest.fixture
def other(make_manager, monkeypatch):
    """Another notebook's manager on this machine (the same ledger), with one model loaded."""
    monkeypatch.setenv("JPY_SESSION_NAME", "analysis/report.ipynb")
    theirs = make_manager()
    monkeypatch.delenv("JPY_SESSION_NAME")
    fake(theirs, "their-model", 3 * GB)
    theirs.load("their-model")
    return theirs


def machine_shows(board, *words):
    board.refresh()
    return all(word in board._machine_html.value for word in words)


def machine_row(board, model_id):
    """The cells of ``model_id``'s row in "This machine": device, model, notebook, memory, state, pinned, in use..."""
    board.refresh()
    rows = re.findall(r"<tr>(.*?)</tr>", board._machine_html.value)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in rows]
    return next((row for row in cells if len(row) > 1 and row[1] == model_id), None)


def test_this_machine_lists_another_notebooks_models_and_the_device_bar_shows_what_they_hold(board, manager, other):
    assert until(lambda: (machine_row(board, "their-model") or [""] * 5)[4] == "loaded")
    manager.load("a")  # after theirs is published loaded: on the fake clock a wait for their load would never end
    device, _, notebook, memory, _, pinned, in_use, _, lent_to = machine_row(board, "their-model")
    assert (device, notebook, memory, pinned, in_use, lent_to) == ("cuda:0", "analysis/report.ipynb", "3.0 GB", "", "", "")
    assert "This machine" in board._machine_html.value
    assert machine_row(board, "a") is None  # this kernel's own models are in the rows above
    assert "other notebooks: 3.0 GB" in board._devices.value
    other.pin("their-model")
    holder, release = lease_elsewhere(other, "their-model")
    try:
        other._parts.cooperation.publish_soon()  # a lease is published with the next heartbeat
        assert until(lambda: machine_row(board, "their-model")[5:7] == ["yes", "1"])
    finally:
        release.set()
        holder.join()
    other.unload("their-model")
    assert until(lambda: machine_shows(board, "no other notebook holds a model"))
    assert "other notebooks:" not in board._devices.value


def test_the_background_writer_shows_another_notebooks_model_without_any_event_here(manager, make_manager):
    dashboard = Dashboard(manager, refresh_interval=0.2)
    try:
        changed = threading.Event()
        dashboard._machine_html.observe(lambda change: changed.set() if "late-model" in change["new"] else None,
                                        names="value")
        theirs = make_manager()
        fake(theirs, "late-model")
        theirs.load("late-model")  # an event of the other manager: this dashboard hears none
        assert changed.wait(15)
    finally:
        dashboard.close()


def test_a_machine_that_cannot_be_read_leaves_the_dashboard_working(board, manager, monkeypatch):
    def broken():
        raise RuntimeError("database disk image is malformed")

    monkeypatch.setattr(manager, "machine", broken)
    manager.load("a")
    board.refresh()
    assert state(board, "a").startswith("loaded") and "budget" in board._devices.value
    assert "not known now" in board._machine_html.value and "malformed" in board._machine_html.value
    board._rows["a"].unload.click()  # clicks act as before
    assert manager.row("a").state == "registered"


def test_a_ledger_that_cannot_be_opened_leaves_the_dashboard_working(make_manager, tmp_path):
    (tmp_path / "plain").write_text("a file where the ledger's folder should be")
    manager = make_manager(ledger_path=tmp_path / "plain" / "ledger.sqlite")
    fake(manager, "a")
    manager.load("a")
    dashboard = Dashboard(manager, background=False)
    try:
        assert state(dashboard, "a").startswith("loaded") and "This machine" in dashboard._machine_html.value
        assert "cooperation with other kernels is off" in dashboard._events.value
    finally:
        dashboard.close()


def test_an_adapter_row_shows_its_base_under_its_id(adapter_manager):
    from jupyter_llm_manager.frontends.views.status import name_html
    from jupyter_llm_manager.reports import StatusRow

    dashboard = Dashboard(adapter_manager, background=False)
    try:
        assert "adapter on base (shared)" in row_text(dashboard, "tuned")
        assert "adapter" not in row_text(dashboard, "base")
    finally:
        dashboard.close()
    own = StatusRow("math", "k", (), "transformers", "cpu", "loaded", 0, False, 0, None, None, None, None, None,
                    base="smol", adapter="/adapters/math", shares_base=False)
    assert "adapter on smol (own instance)" in name_html(own) and "/adapters/math" in name_html(own)
