"""The kernel side of the JupyterLab extension, driven as JupyterLab drives it (no browser)."""

from __future__ import annotations

import itertools
import json
import threading
import time

import comm
import pytest
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, count_unloads, fake, lease_elsewhere

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.frontends import actions
from jupyter_llm_manager.frontends.lab_bridge import TARGET, LabBridge


class FrontendComm(comm.DummyComm):
    """A comm as JupyterLab's end sees it: records what the kernel sends."""

    requests = itertools.count(1)

    def __init__(self, *args, **kwargs):
        self.received: list[dict] = []
        self.arrived = threading.Event()
        self.changed = threading.Condition()
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        if msg_type == "comm_msg" or (msg_type == "comm_open" and data):
            with self.changed:
                self.received.append(json.loads(json.dumps(data)))  # what crosses the wire is JSON
                self.changed.notify_all()
            self.arrived.set()

    def snapshots(self):
        return [m for m in self.received if m.get("type") == "snapshot"]

    def send_click(self, action, model=None):
        """A button in the panel: the message as JupyterLab sends it; returns its request id."""
        request = f"r{next(self.requests)}"
        self.handle_msg({"content": {"data": {"action": action, "model": model, "request": request}}})
        return request

    def answer(self, request, kind="result", timeout=30):
        """The kernel's message of ``kind`` for ``request`` (actions answer from a thread of their own)."""
        def found():
            return next((m for m in self.received if m.get("type") == kind and m.get("request") == request), None)

        with self.changed:
            assert self.changed.wait_for(found, timeout), f"no {kind} for {request} within {timeout} s"
            return found()

    def send_click_to(self, member, model):
        """The panel's Unload on another notebook's model: ask its manager; returns the request id."""
        request = f"r{next(self.requests)}"
        self.handle_msg({"content": {"data": {"action": "ask_to_unload", "member": member, "model": model,
                                              "request": request}}})
        return request

    def click(self, action, model=None):
        """A button in the panel: the kernel handles the message and answers."""
        return self.answer(self.send_click(action, model))


@pytest.fixture
def manager(make_manager):
    manager = make_manager()
    for model_id in ("a", "b"):
        fake(manager, model_id, 2 * GB)
    manager.alias("chat", "a")
    return manager


@pytest.fixture
def bridge(manager, monkeypatch):
    created = []
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: created.append(FrontendComm(*a, **k)) or created[-1])
    bridge = LabBridge(manager)
    bridge.attach()
    bridge.opened = created
    yield bridge
    bridge.detach()


def frontend_opens(bridge) -> FrontendComm:
    channel = FrontendComm(target_name=TARGET, primary=False)
    comm.get_comm_manager().register_comm(channel)  # as the kernel's comm_open handler does
    bridge._on_open(channel, {"content": {"data": {"action": "refresh"}}})
    return channel


def test_attach_registers_the_target_and_never_opens_a_comm_itself(bridge, manager):
    assert TARGET in comm.get_comm_manager().targets
    manager.load("a")  # events: still nothing is opened (a frontend without the extension would warn)
    assert bridge.opened == []


def test_a_frontend_that_opens_the_comm_gets_a_snapshot_of_ids_and_numbers(bridge, manager):
    manager.load("chat")
    channel = frontend_opens(bridge)
    (snapshot,) = channel.snapshots()
    assert (snapshot["loaded"], snapshot["held_str"]) == (1, "2.0 GB")
    row = snapshot["models"][0]
    assert (row["id"], row["aliases"], row["state"], row["device"], row["actual"]) == ("a", ["chat"], "loaded",
                                                                                      "cuda:0", "2.0 GB")
    assert snapshot["devices"][1]["device"] == "cuda:0"
    assert snapshot["reserved_str"] == "2.0 GB" and row["reachable"] is None and row["waiting_for"] is None


def test_a_remote_model_says_where_it_runs_before_it_is_loaded():
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("far", backend="openai", base_url="http://127.0.0.1:9/v1", api_key="${FAR_KEY}")
        manager.register("near", source="org/near")
        rows = {row["id"]: row for row in LabBridge(manager).snapshot()["models"]}
        assert rows["far"]["remote"] and rows["far"]["endpoint"] == "http://127.0.0.1:9/v1"  # the panel shows it
        assert rows["near"]["endpoint"] is None  # a local model: its device says where
    finally:
        manager.close()


def test_manager_events_push_one_coalesced_snapshot(bridge, manager):
    channel = frontend_opens(bridge)
    channel.received.clear()
    channel.arrived.clear()
    manager.load("a")  # loading + loaded events
    manager.load("b")
    assert channel.arrived.wait(5)
    bridge._timer and bridge._timer.join(5)
    snapshots = channel.snapshots()
    assert 1 <= len(snapshots) <= 2 and snapshots[-1]["loaded"] == 2


def test_buttons_unload_pin_unload_all_and_free_memory(bridge, manager):
    channel = frontend_opens(bridge)
    manager.load("a")
    assert channel.click("pin", "a")["ok"] and manager.row("a").pinned
    assert channel.click("unpin", "a")["ok"] and not manager.row("a").pinned
    result = channel.click("unload", "a")
    assert result["ok"] and "Unloaded 'a'" in result["message"] and manager.row("a").state == "registered"
    assert channel.snapshots()[-1]["loaded"] == 0  # each answer is followed by a fresh snapshot
    manager.load("a")
    manager.load("b")
    assert "Unloaded 2 model(s)" in channel.click("unload_all")["message"]
    assert "waiting to be freed" in channel.click("free_memory")["message"]


def test_unload_of_a_model_in_use_waits_past_any_limit_until_taken_back_and_unload_all_skips_it(make_manager,
                                                                                                  monkeypatch):
    monkeypatch.setattr(actions, "ACTION_WAIT_S", 0.3)  # what %llm unload and Unload all wait (30 s)
    manager = make_manager(clock=time.monotonic)  # the wait ends on its own
    for model_id in ("a", "b"):
        fake(manager, model_id, 2 * GB)
    tries = count_unloads(manager, monkeypatch)
    bridge = LabBridge(manager)
    bridge.attach()
    try:
        channel = frontend_opens(bridge)
        manager.load("b")
        with manager.use("a"):
            request = channel.send_click("unload", "a")
            assert "unloads when the answer ends" in channel.answer(request, "pending")["message"]
            until(lambda: tries[-1] - tries[0] > 3 * actions.ACTION_WAIT_S)  # past the old limit: still waiting
            assert not [m for m in channel.received if m.get("type") == "result" and m.get("request") == request]
            answer = channel.click("unload_all")
            assert answer["ok"] and "Still in use: a" in answer["message"] and manager.row("b").state == "registered"
            assert channel.click("cancel_unload", "a")["ok"]  # a Cancel (or a second Unload) takes it back
            result = channel.answer(request)
        assert result["ok"] and result["message"] == "Unload of 'a' cancelled: it stays loaded."
        assert "wait=" not in result["message"] and manager.row("a").state == "loaded"
        assert "No unload of 'a' is waiting" in channel.click("cancel_unload", "a")["message"]
    finally:
        bridge.detach()


def test_a_second_unload_takes_the_first_back_whatever_clock_the_manager_runs_on(bridge, manager):
    channel = frontend_opens(bridge)  # the manager runs on a fake clock that never moves by itself
    holder, release = lease_elsewhere(manager, "a")
    try:
        first = channel.send_click("unload", "a")
        channel.answer(first, "pending")
        second = channel.click("unload", "a")  # the same button, clicked again
        result = channel.answer(first)
    finally:
        release.set()
        holder.join()
    assert second["ok"] and result["message"] == "Unload of 'a' cancelled: it stays loaded."
    assert manager.row("a").state == "loaded"


def test_unload_of_a_model_in_use_unloads_when_the_answer_ends_however_long_it_runs(bridge, manager, monkeypatch):
    monkeypatch.setattr(actions, "ACTION_WAIT_S", 0.2)
    channel = frontend_opens(bridge)
    tries = count_unloads(manager, monkeypatch)
    holder, release = lease_elsewhere(manager, "a")  # a long generation
    try:
        request = channel.send_click("unload", "a")
        channel.answer(request, "pending")
        until(lambda: tries[-1] - tries[0] > 3 * actions.ACTION_WAIT_S)
        assert manager.row("a").state == "loaded"
    finally:
        release.set()
        holder.join()
    result = channel.answer(request)
    assert result["ok"] and "Unloaded 'a'" in result["message"] and manager.row("a").state == "registered"


def test_unload_of_a_model_in_use_says_what_it_waits_for_and_other_clicks_act_meanwhile(bridge, manager):
    channel = frontend_opens(bridge)
    holder, release = lease_elsewhere(manager, "a")  # a cell generating
    try:
        request = channel.send_click("unload", "a")
        note = channel.answer(request, "pending")["message"]
        assert "in use (1 use" in note and "unloads when the answer ends" in note
        assert channel.click("pin", "b")["ok"] and manager.row("b").pinned  # the waiting unload holds nothing back
        assert manager.row("a").state == "loaded"
    finally:
        release.set()
        holder.join()
    result = channel.answer(request)
    assert result["ok"] and "Unloaded 'a'" in result["message"]
    assert result["snapshot"]["loaded"] == 0  # the outcome comes with the state it left


def test_a_snapshot_taken_before_an_answer_never_arrives_after_it(bridge, manager):
    """A timer's snapshot that arrived after "Unloaded" would show the model loaded again (and drop the answer)."""
    channel = frontend_opens(bridge)
    manager.load("a")
    until(lambda: bridge._timer is None)  # the load's own snapshot is out
    taken, go = threading.Event(), threading.Event()
    take = bridge.snapshot

    def descheduled_timer():  # the timer thread stops between taking its snapshot and sending it
        snapshot = take()
        if threading.current_thread().name == "llm-lab-bridge" and not taken.is_set():
            taken.set()
            go.wait(10)
        return snapshot

    bridge.snapshot = descheduled_timer
    manager.pin("b")  # an event: a timer pushes a snapshot with 'a' loaded
    assert taken.wait(5)
    request = channel.send_click("unload", "a")
    assert until(lambda: manager.row("a").state == "registered")

    def answered():
        return any(m.get("request") == request for m in channel.received)

    with channel.changed:
        overtook = channel.changed.wait_for(answered, 0.5)  # the answer must wait for the older snapshot
    go.set()
    result = channel.answer(request)
    assert not overtook and result["ok"] and "Unloaded 'a'" in result["message"]
    after = channel.received[channel.received.index(result):]
    later = [m["loaded"] for m in after if m.get("type") == "snapshot"]
    assert later and set(later) == {0}  # nothing older follows it


def test_unknown_actions_and_models_are_answered_not_raised(bridge):
    channel = frontend_opens(bridge)
    assert not channel.click("explode")["ok"]
    assert "No model is registered as 'nope'" in channel.click("unload", "nope")["message"]


def test_detach_closes_the_comms_and_unregisters(bridge, manager):
    channel = frontend_opens(bridge)
    closed = []
    channel.close = lambda *a, **k: closed.append(True)
    bridge.detach()
    assert closed and TARGET not in comm.get_comm_manager().targets
    manager.load("a")  # no more pushes after detach
    assert bridge._timer is None


# -- other notebooks on this machine, and adapters' bases ---------------------------------------------------


@pytest.fixture
def other(make_manager, monkeypatch):
    """Another notebook's manager on this machine (the same ledger), with two models loaded."""
    monkeypatch.setenv("JPY_SESSION_NAME", "analysis/report.ipynb")
    theirs = make_manager()
    monkeypatch.delenv("JPY_SESSION_NAME")
    for model_id in ("idle", "busy"):
        fake(theirs, model_id, GB)
        theirs.load(model_id)
    return theirs


def machine_model(snapshot, model_id):
    return next((m for m in snapshot["machine"]["models"] if m["model"] == model_id), None)


def test_the_snapshot_lists_the_other_notebooks_models_with_their_manager(bridge, manager, other):
    def published():  # their publisher thread says "loaded" shortly after the loads
        rows = [machine_model(bridge.snapshot(), m) for m in ("idle", "busy")]
        return all(row and row["state"] == "loaded" for row in rows)

    assert until(published)
    manager.load("a")  # after theirs: on the fake clock a wait for their load in flight would never end
    snapshot = bridge.snapshot()
    row = machine_model(snapshot, "idle")
    assert row is not None and machine_model(snapshot, "a") is None  # this kernel's models are the cards above
    assert (row["notebook"], row["device"], row["memory"], row["bytes"]) == ("analysis/report.ipynb", "cuda:0",
                                                                               "1.0 GB", GB)
    assert row["member"] == other.machine().kernels[0].member and row["unloadable"] and not row["pinned"]
    assert snapshot["machine"]["cooperating"] and not snapshot["machine"]["problem"]
    cuda = next(d for d in snapshot["devices"] if d["device"] == "cuda:0")
    assert cuda["notebooks"] == "2.0 GB"  # what the other notebook holds there


def test_unload_asks_the_other_notebook_and_it_unloads_an_idle_model(bridge, other):
    channel = frontend_opens(bridge)
    member = other.machine().kernels[0].member
    result = channel.answer(channel.send_click_to(member, "idle"))
    assert result["ok"] and result["message"] == "analysis/report.ipynb unloaded 'idle': 1.0 GB freed"  # the owner
    assert other.row("idle").state == "registered" and other.row("busy").state == "loaded"
    assert machine_model(result["snapshot"], "idle") is None  # the outcome comes with the machine it left


def test_unload_of_another_notebooks_model_in_use_or_pinned_is_refused_with_a_message(bridge, other):
    channel = frontend_opens(bridge)
    member = other.machine().kernels[0].member
    holder, release = lease_elsewhere(other, "busy")
    try:
        answer = channel.answer(channel.send_click_to(member, "busy"))
    finally:
        release.set()
        holder.join()
    assert "in use" in answer["message"] and other.row("busy").state == "loaded"
    other.pin("idle")
    assert "it stays" in channel.answer(channel.send_click_to(member, "idle"))["message"]
    assert other.row("idle").state == "loaded"


def test_unload_requests_without_a_member_or_for_one_gone_are_answered_not_raised(bridge, other):
    channel = frontend_opens(bridge)
    for member in (None, "", 42, "x" * 500):
        answer = channel.answer(channel.send_click_to(member, "idle"))
        assert not answer["ok"] and "member id" in answer["message"]
    assert not channel.answer(channel.send_click_to(other.machine().kernels[0].member, None))["ok"]
    gone = channel.answer(channel.send_click_to("12345-deadbeef", "idle"))
    assert not gone["ok"] and "no manager '12345-deadbeef'" in gone["message"]
    assert other.row("idle").state == "loaded"


def test_a_machine_that_cannot_be_read_leaves_the_panel_working(bridge, manager, monkeypatch):
    def broken():
        raise RuntimeError("database disk image is malformed")

    monkeypatch.setattr(manager, "machine", broken)
    channel = frontend_opens(bridge)
    (snapshot,) = channel.snapshots()
    assert [row["id"] for row in snapshot["models"]] == ["a", "b"]
    assert snapshot["machine"]["models"] == [] and "malformed" in snapshot["machine"]["problem"]
    assert channel.click("load", "a")["ok"] and manager.row("a").state == "loaded"


def test_the_panel_hears_when_another_notebook_loads_a_model(bridge, manager, make_manager):
    channel = frontend_opens(bridge)
    theirs = make_manager()
    fake(theirs, "late")
    theirs.load("late")  # nothing happens in this kernel: the bridge looks at the machine on its own

    def pushed():
        return any(machine_model(s, "late") for s in channel.snapshots())

    with channel.changed:
        assert channel.changed.wait_for(pushed, 15)


def test_an_adapter_row_carries_its_base(adapter_manager):
    rows = {row["id"]: row for row in LabBridge(adapter_manager).snapshot()["models"]}
    assert (rows["tuned"]["base"], rows["tuned"]["base_str"], rows["tuned"]["adapter"]) == (
        "base", "on base (shared)", str(adapter_manager.adapter_folder))
    assert rows["base"]["base"] is None and rows["base"]["base_str"] == ""


def test_the_panel_says_which_models_this_notebook_lost_while_they_stay_unloaded(bridge, manager, other):
    """Issue "memory truth", item 5: the notebook that lost a model sees it in its panel too, not only in a footer."""
    # their publisher says "loaded" shortly after the loads; on the fake clock a wait for a load in flight never ends
    assert until(lambda: all((machine_model(bridge.snapshot(), m) or {}).get("state") == "loaded"
                             for m in ("idle", "busy")))
    manager.load("a")
    manager.load("b")
    assert bridge.snapshot()["lost"] == []
    member = next(k.member for k in manager.machine().kernels if k.this)
    assert "unloaded 'a'" in other.ask_to_unload(member, "a")  # a click in analysis/report.ipynb's panel
    manager.unload("b")  # this notebook's own unload: nothing to tell
    assert bridge.snapshot()["lost"] == ["a was unloaded by analysis/report.ipynb, just now; it will load again"]
    manager.load("a")  # loaded again: no longer lost
    assert bridge.snapshot()["lost"] == []
