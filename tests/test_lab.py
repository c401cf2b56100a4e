"""The kernel side of the JupyterLab extension, driven as JupyterLab drives it (no browser)."""

from __future__ import annotations

import itertools
import json
import threading
import time

import comm
import pytest
from fakes import GB, fake, lease_elsewhere

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


def test_unload_of_a_model_in_use_is_refused_in_one_line_and_unload_all_skips_it(make_manager, monkeypatch):
    monkeypatch.setattr(actions, "ACTION_WAIT_S", 0.3)  # what a click waits for a model in use (30 s)
    manager = make_manager(clock=time.monotonic)  # the wait ends on its own
    for model_id in ("a", "b"):
        fake(manager, model_id, 2 * GB)
    bridge = LabBridge(manager)
    bridge.attach()
    try:
        channel = frontend_opens(bridge)
        manager.load("b")
        with manager.use("a"):
            result = channel.click("unload", "a")
            assert not result["ok"] and "is in use" in result["message"]
            answer = channel.click("unload_all")
        assert answer["ok"] and "Still in use: a" in answer["message"] and manager.row("b").state == "registered"
    finally:
        bridge.detach()


def test_unload_of_a_model_in_use_says_what_it_waits_for_and_other_clicks_act_meanwhile(bridge, manager):
    channel = frontend_opens(bridge)
    holder, release = lease_elsewhere(manager, "a")  # a cell generating
    try:
        request = channel.send_click("unload", "a")
        note = channel.answer(request, "pending")["message"]
        assert "in use (1 use" in note and "unloads when released" in note
        assert channel.click("pin", "b")["ok"] and manager.row("b").pinned  # the waiting unload holds nothing back
        assert manager.row("a").state == "loaded"
    finally:
        release.set()
        holder.join()
    result = channel.answer(request)
    assert result["ok"] and "Unloaded 'a'" in result["message"]
    assert result["snapshot"]["loaded"] == 0  # the outcome comes with the state it left


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
