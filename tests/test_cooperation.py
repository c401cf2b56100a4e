"""Several kernels, one machine: managers in separate processes share memory through the ledger.

Each "kernel" is a child process with its own manager (tests/jlm_helpers/kernels.py),
tiny real models on the CPU, one ledger in a temporary folder, and a memory
budget that fits one model at a time, counted over every cooperating kernel.
"""

from __future__ import annotations

import math
import os
import stat
import time

import pytest
from jlm_helpers.conditions import until
from jlm_helpers.kernels import Kernel

from jupyter_llm_manager import LLMManager, ResourceNotAvailableError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def budget(tiny_models) -> int:
    """Room for the larger tiny model, not for two."""
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    try:
        sizes = [manager.register(n, source=str(p)) and manager.estimate(n).total_bytes for n, p in tiny_models.items()]
    finally:
        manager.close()
    return int(max(sizes) * 1.5)


@pytest.fixture
def kernels(tmp_path, tiny_models, budget):
    """``kernels("A.ipynb", "B.ipynb", cooperate=True, models=..., room=1)``: started kernels, closed after the test.

    ``room`` is the budget in models: one by default (cooperating kernels must make room for each other);
    ``memory`` the budget in bytes instead.
    """
    started: list[Kernel] = []
    ledger = tmp_path / "ledger.sqlite"

    def start(*names: str, cooperate: bool = True, models: dict | None = None, room: int = 1,
              memory: int | None = None) -> list[Kernel]:
        made = [Kernel(name, tmp_path, ledger) for name in names]
        started.extend(made)
        chosen = models or {"a": {"source": str(tiny_models["a"])}, "b": {"source": str(tiny_models["b"])}}
        for kernel in made:
            kernel.send("start", settings={"memory_budget": {"cpu": memory or budget * room}, "cooperate": cooperate,
                                           "wait_timeout": 30}, models=chosen)
        for kernel in made:
            assert kernel.answer()["ok"], kernel.stderr_tail()
        return made

    start.ledger = ledger  # type: ignore[attr-defined]
    yield start
    for kernel in started:
        kernel.close()


def queued(ledger, count: int) -> None:
    """Wait until ``count`` requests wait in the machine-wide queue."""
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    reader, deadline = Ledger(ledger), time.monotonic() + 30
    while len(reader.requests()) < count:
        assert time.monotonic() < deadline, "the requests never waited"
        time.sleep(0.05)
    reader.close()


def events(kernel: Kernel, kind: str) -> list[dict]:
    return [e for e in kernel.ask("events")["events"] if e["kind"] == kind]


def test_an_idle_model_of_another_kernel_is_evicted_for_a_request_that_needs_its_room(kernels):
    a, b = kernels("analysis.ipynb", "report.ipynb")
    assert a.ask("load", id="a")["ok"]
    loaded = b.ask("load", id="b", wait=30)
    assert loaded["ok"], loaded
    (evicted,) = events(a, "evicted")
    assert evicted["reason"] == "other_kernel" and "report.ipynb" in evicted["message"]
    assert a.ask("states")["states"]["a"] == "registered" and b.ask("states")["states"]["b"] == "loaded"
    machine = b.ask("machine")
    assert {(k[1], k[2]) for k in machine["kernels"]} >= {("analysis.ipynb", False), ("report.ipynb", True)}
    assert [m[2] for m in machine["models"]] == ["b"]


def test_a_kernel_busy_running_a_cell_still_makes_room(kernels):
    a, b = kernels("busy.ipynb", "asks.ipynb")
    assert a.ask("load", id="a")["ok"]
    a.send("busy", seconds=30)  # a long cell: the kernel's main thread is taken
    loaded = b.ask("load", id="b", wait=20)
    assert loaded["ok"], loaded
    assert a.process.poll() is None and a._answers.empty()  # the cell still runs: its manager's thread answered
    assert a.answer(60)["ok"]
    assert [e["reason"] for e in events(a, "evicted")] == ["other_kernel"]


def test_a_model_in_use_elsewhere_makes_the_request_wait_until_its_lease_ends(kernels):
    a, b = kernels("holder.ipynb", "waiter.ipynb")
    assert a.ask("hold", id="a")["ok"]  # loaded and in use (a generation, a use() block)
    b.send("load", id="b", wait=60)
    queued(kernels.ledger, 1)  # the request waits in the machine-wide queue
    assert a.ask("release", id="a")["ok"]
    assert b.answer(60)["ok"]
    waits = events(b, "waiting")
    assert waits and "a in use in holder.ipynb" in waits[0]["message"]


def test_only_pinned_models_elsewhere_in_the_way_fail_at_once_naming_each(kernels):
    a, b = kernels("pins.ipynb", "wants.ipynb")
    assert a.ask("load", id="a")["ok"] and a.ask("pin", id="a")["ok"]
    refused = b.ask("load", id="b", wait=60, timeout=20)  # at once: waiting cannot help
    assert not refused["ok"] and "'a'" in refused["error"] and "pinned in pins.ipynb" in refused["error"]


def test_a_killed_kernel_is_skipped_and_its_memory_counts_no_more(kernels):
    a, b = kernels("crashes.ipynb", "survives.ipynb")
    assert a.ask("load", id="a")["ok"]
    a.kill()
    loaded = b.ask("load", id="b", wait=10)
    assert loaded["ok"], loaded
    assert [k[1] for k in b.ask("machine")["kernels"]] == ["survives.ipynb"]


def test_a_kernel_that_does_not_answer_costs_no_more_than_the_wait_and_is_named_as_such(kernels):
    """A stopped kernel holding an idle model: each request takes about its wait, and says who did not answer."""
    import signal

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    a, b = kernels("stopped.ipynb", "asks.ipynb")
    assert a.ask("load", id="a")["ok"]
    reader = Ledger(kernels.ledger)
    try:  # stopped once the ledger says it is loaded (its publisher writes that just after the load)
        assert until(lambda: [m.state for m in reader.models()] == ["loaded"], 30), reader.models()
    finally:
        reader.close()
    os.kill(a.process.pid, signal.SIGSTOP)
    try:
        assert not b.ask("load", id="a", wait=0)["ok"]  # once untimed: a first load's own costs (the GPU probe)
        for wait in (0, 0.5, 1):
            started = time.monotonic()
            refused = b.ask("load", id="a", wait=wait, timeout=30)  # its own copy: two do not fit
            took = time.monotonic() - started
            assert not refused["ok"] and took < wait + 1.0, (wait, took, refused)
            assert "stopped.ipynb" in refused["error"] and "did not answer" in refused["error"], refused
            assert "in use" not in refused["error"], refused  # it is idle: its kernel is stopped
    finally:
        os.kill(a.process.pid, signal.SIGCONT)


def test_the_room_of_a_killed_kernel_returns_at_once_even_before_it_is_reaped(kernels):
    """SIGKILL, and nobody reaps the process (a zombie): a request waiting for its model's room gets it at once."""
    import signal

    a, b = kernels("killed.ipynb", "waits.ipynb")
    assert a.ask("hold", id="a")["ok"]  # in use: the other kernel's request waits for it
    b.send("load", id="a", wait=30)
    queued(kernels.ledger, 1)
    os.kill(a.process.pid, signal.SIGKILL)  # not reaped: the test process is its parent and does not wait
    killed = time.monotonic()
    assert b.answer(60)["ok"]
    (loading,) = [e for e in events(b, "loading") if e["model"] == "a"]
    assert loading["at"] - killed < 0.5, loading["at"] - killed  # the room was taken within half a second
    assert a.process.poll() is not None  # reaped only now, after the room was back


def test_three_kernels_are_served_first_come_first_served(kernels):
    a, b, c = kernels("first.ipynb", "second.ipynb", "third.ipynb")
    assert a.ask("hold", id="a")["ok"]
    b.send("load", id="b", wait=60)
    queued(kernels.ledger, 1)
    c.send("load", id="a", wait=60)
    queued(kernels.ledger, 2)
    assert a.ask("release", id="a")["ok"]
    assert b.answer(60)["ok"] and c.answer(60)["ok"]
    (second,) = events(b, "loaded")
    third = events(c, "loaded")
    seen = {"b": b.ask("events")["events"], "c": c.ask("events")["events"]}
    assert third and second["at"] < third[-1]["at"], seen  # b first: it asked first


def test_kernels_that_do_not_cooperate_keep_to_themselves(kernels):
    a, b = kernels("alone.ipynb", "also-alone.ipynb", cooperate=False)
    assert a.ask("load", id="a")["ok"] and b.ask("load", id="b")["ok"]
    assert a.ask("states")["states"]["a"] == "loaded" and not events(a, "evicted")


def test_priorities_and_protection_hold_across_kernels(kernels, tiny_models):
    models = {"ears": {"source": str(tiny_models["a"]), "kind": "asr"},
              "chat": {"source": str(tiny_models["b"]), "kind": "llm"},
              "other-ears": {"source": str(tiny_models["a"]), "kind": "asr"}}  # its own instance in B
    a, b = kernels("speech.ipynb", "chat.ipynb", models=models)
    assert a.ask("load", id="ears")["ok"]
    refused = b.ask("load", id="chat", wait=0)  # a protected model never goes for a lower priority
    assert not refused["ok"] and "protected in speech.ipynb" in refused["error"], refused
    assert a.ask("states")["states"]["ears"] == "loaded"
    assert b.ask("load", id="other-ears", wait=10)["ok"]  # an equal priority may replace it
    assert a.ask("states")["states"]["ears"] == "registered"


def test_a_corrupt_ledger_is_recreated_with_a_warning(kernels):
    """Only a file the kernel had open as its ledger is recreated (see test_ledger_damage for other files)."""
    from pathlib import Path

    (a,) = kernels("after-corruption.ipynb")
    assert a.ask("load", id="a")["ok"] and a.ask("unload", id="a")["ok"]
    for suffix in ("", "-wal", "-shm"):  # written over in place
        Path(f"{kernels.ledger}{suffix}").write_bytes(b"this is not a database" * 2000)
    # the lost file cannot be read a last time: a placement waits a few seconds for other kernels to write again
    assert a.ask("load", id="a", wait=10)["ok"]
    warnings = [e["message"] for e in events(a, "warning")]
    assert any("recreated" in message for message in warnings), warnings


# -- a ledger that cannot be used never stops a kernel's own work ------------------------------------------

@pytest.mark.parametrize("problem", ["another user's file", "a folder that is a file"])
def test_a_ledger_that_cannot_be_used_leaves_the_kernel_working_alone(make_manager, tmp_path, problem,
                                                                      monkeypatch):

    from jlm_helpers.fakes import fake

    from jupyter_llm_manager.manager.cooperation import ledger as ledger_module

    if problem == "another user's file":
        ledger = tmp_path / "theirs.sqlite"
        ledger.write_bytes(b"")
        owner = ledger.stat().st_uid  # the ledger sees itself run as another user: no root needed to test it
        monkeypatch.setattr(ledger_module.os, "getuid", lambda: owner + 4242)
    else:
        (tmp_path / "plain").write_text("not a folder")
        ledger = tmp_path / "plain" / "ledger.sqlite"
    manager = make_manager(ledger_path=str(ledger), max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    manager.load("a")
    assert manager.generate("b", "one two").text  # evicts its own model, as without cooperation
    warnings = [e.message for e in manager.events() if e.kind == "warning" and "cooperation" in e.message]
    assert len(warnings) == 1 and "goes on with its own memory only" in warnings[0], warnings
    machine = manager.machine()
    assert machine.kernels[0].this and [m.model_id for m in machine.models] == ["b"]
    if problem == "another user's file":
        assert ledger.read_bytes() == b""  # never written


# -- seeing the machine ------------------------------------------------------------------------------------

def test_every_kernels_models_show_in_machine_status_all_and_ps(kernels, tmp_path):
    import subprocess
    import sys

    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output

    a, b = kernels("analysis.ipynb", "report.ipynb", room=3)  # room for both models
    assert a.ask("load", id="a")["ok"] and b.ask("load", id="b")["ok"] and b.ask("pin", id="b")["ok"]
    viewer = LLMManager(config_path=False, preload=False, ledger_path=str(kernels.ledger))
    try:
        expected = {("analysis.ipynb", "a", "cpu", False), ("report.ipynb", "b", "cpu", True)}
        deadline = time.monotonic() + 10  # each kernel publishes a change shortly after it, from its own thread
        while True:
            report = viewer.machine()
            if {(m.notebook, m.model_id, m.device, m.pinned) for m in report.models} == expected:
                break
            assert time.monotonic() < deadline, report.models
            time.sleep(0.05)
        assert {k.notebook for k in report.kernels if not k.this} == {"analysis.ipynb", "report.ipynb"}
        assert all(m.bytes > 0 and m.last_used > 0 for m in report.models)

        shell = InteractiveShell.instance()
        shell.run_line_magic("load_ext", "jupyter_llm_manager")
        shell.magics_manager.registry["LLMMagics"].manager = viewer
        with capture_output() as captured:
            shell.run_line_magic("llm", "status --all")
        shown = "\n".join(output.data.get("text/html", "") for output in captured.outputs)
        assert "analysis.ipynb" in shown and "report.ipynb" in shown and "(this one)" in shown
    finally:
        viewer.close()

    env = {**os.environ, "JUPYTER_LLM_MANAGER_LEDGER": str(kernels.ledger), "JUPYTER_CONFIG_DIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-c", "from jupyter_llm_manager.frontends.cli import main; main(['ps'])"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any("analysis.ipynb" in line and " a " in f" {line} " for line in lines), done.stdout
    assert any("report.ipynb" in line and "yes" in line for line in lines), done.stdout
    assert "(this one)" not in done.stdout and "2 managers" in done.stdout


def test_a_script_outside_jupyter_takes_part_under_its_file_name(kernels, tiny_models, tmp_path, budget):
    (a,) = kernels("analysis.ipynb")
    script = Kernel("", tmp_path, kernels.ledger, environment={"JPY_SESSION_NAME": ""})
    try:
        assert script.ask("start", settings={"memory_budget": {"cpu": budget}, "wait_timeout": 30},
                          models={"b": {"source": str(tiny_models["b"])}})["ok"]
        assert a.ask("load", id="a")["ok"]
        assert script.ask("load", id="b", wait=30)["ok"]
        (evicted,) = events(a, "evicted")
        assert evicted["reason"] == "other_kernel" and "kernel.py" in evicted["message"]  # the script's name
        assert [k[1] for k in a.ask("machine")["kernels"] if not k[2]] == ["kernel.py"]
    finally:
        script.close()


# -- the machine-wide queue, in one process (a request of another member written to the ledger) ------------

def test_room_freed_for_an_earlier_request_elsewhere_is_never_taken_by_a_later_one(make_manager, tmp_path):
    import psutil
    from jlm_helpers.fakes import GB, fake

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow

    path = tmp_path / "queue.sqlite"
    other = Ledger(path)  # another notebook (alive: this very process) waits for 2.5 GB on the GPU
    other.publish(MemberRow("elsewhere", os.getpid(), psutil.Process().create_time(), "", "first.ipynb", "",
                            time.time()), [])
    other.enqueue("elsewhere", "theirs", {"cuda:0": int(2.5 * GB)}, 0)
    manager = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    fake(manager, "big", 2 * GB)
    fake(manager, "small", GB // 4)
    try:
        with pytest.raises(ResourceNotAvailableError, match="queued behind theirs in first.ipynb"):
            manager.load("big", wait=0)  # 3 GB free now, but 2.5 GB of it is promised to the earlier request
        assert manager.row("big").state == "registered"
        manager.load("small", wait=0)  # what the earlier request leaves may be used
        other.dequeue(other.requests()[0].arrival)
        manager.load("big", wait=0)  # served: the room is free for anyone
        assert manager.row("big").state == manager.row("small").state == "loaded"
    finally:
        other.close()


def test_a_request_waiting_on_other_kernels_is_seen_by_them_before_its_first_model(make_manager, tmp_path, clock):
    import threading

    import psutil
    from jlm_helpers.fakes import GB, fake

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow, ModelRow

    path = tmp_path / "queue.sqlite"
    other = Ledger(path)  # another notebook generating with a 2.5 GB model
    them = MemberRow("elsewhere", os.getpid(), psutil.Process().create_time(), "", "first.ipynb", "", time.time())
    other.publish(them, [ModelRow("elsewhere", "theirs", "theirs", "cuda:0", int(2.5 * GB), "loaded", False, 1,
                                  time.time(), 0, False)])
    manager = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    fake(manager, "big", 2 * GB)
    waiting = threading.Thread(target=manager.load, args=("big",), kwargs={"wait": 60}, daemon=True)
    waiting.start()
    deadline = time.monotonic() + 30
    while not other.requests():
        assert time.monotonic() < deadline and waiting.is_alive(), "the request never took its place in the queue"
        time.sleep(0.02)
    (request,) = other.requests()
    assert request.member in {m.member for m in other.members()}  # a member: the others count its turn
    assert set(request.needed) == {"cuda:0"} and request.needed["cuda:0"] >= 2 * GB
    other.publish(them, [])  # the other notebook's model is gone
    while waiting.is_alive():
        assert time.monotonic() < deadline, "the request never went on once the room was free"
        clock.advance(0.3)  # the waiting request looks at the ledger again every moment
        waiting.join(0.05)
    assert manager.row("big").state == "loaded" and not other.requests()
    other.close()


def test_the_others_rows_are_read_again_only_when_another_connection_wrote(tmp_path):
    import subprocess
    import sys

    import psutil

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow, ModelRow

    path = tmp_path / "cached.sqlite"
    mine, theirs = Ledger(path), Ledger(path)  # two connections, as two kernels have
    started = psutil.Process().create_time()
    me = MemberRow("me", os.getpid(), started, "", "mine.ipynb", "", time.time())
    them = MemberRow("them", os.getpid(), started, "", "theirs.ipynb", "", time.time())
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        gone = MemberRow("gone", child.pid, psutil.Process(child.pid).create_time(), "", "gone.ipynb", "", time.time())
        mine.publish(me, [ModelRow("me", "k", "m", "cpu", 10, "loaded", False, 0, time.time(), 0, False)])
        theirs.publish(them, [])
        theirs.publish(gone, [])
        assert {m.member for m in mine.others("me")[0]} == {"them", "gone"}
        statements: list[str] = []
        mine._connect().set_trace_callback(statements.append)
        mine.publish(me, [])  # this member's own writes change only its own rows
        assert mine.others("me")[1] == [] and not [s for s in statements if s.startswith("SELECT")]
        theirs.publish(them, [ModelRow("them", "k", "t", "cpu", 20, "loaded", False, 1, time.time(), 0, False)])
        theirs.enqueue("them", "u", {"cpu": 30}, 0)
        members, models, requests = mine.others("me")  # another connection wrote: read again
        assert {m.member for m in members} == {"them", "gone"}
        assert [(r.member, r.bytes) for r in models] == [("them", 20)]
        assert [(r.member, r.needed) for r in requests] == [("them", {"cpu": 30})]
        child.kill()
        child.wait()
        assert {m.member for m in mine.others("me")[0]} == {"them"}  # nothing written: a gone process still drops
        assert "gone" not in {m.member for m in theirs.members()}
    finally:
        child.kill()
        child.wait()
        mine.close()
        theirs.close()


def load_meanwhile(clock, *requests) -> None:
    """Load ``(manager, model_id)`` pairs, each in its own thread, moving the fake clock until all are done.

    A request waiting on another manager looks at the ledger again every moment of the fake clock.
    """
    import threading

    loads = [threading.Thread(target=m.load, args=(n,), kwargs={"wait": math.inf}, daemon=True) for m, n in requests]
    for load in loads:
        load.start()
    deadline = time.monotonic() + 30
    while any(load.is_alive() for load in loads):
        assert time.monotonic() < deadline, "a request never went on"
        clock.advance(0.3)
        for load in loads:
            load.join(0.02)


def published(ledger, states: list[str]) -> None:
    """Wait until the ledger's model rows have these states (the publishers write a moment after a change)."""
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    reader, deadline = Ledger(ledger), time.monotonic() + 30
    while sorted(row.state for row in reader.models()) != sorted(states):
        assert time.monotonic() < deadline, f"the ledger never showed {states}"
        time.sleep(0.02)
    reader.close()


def test_two_kernels_asking_at_the_same_instant_never_both_take_the_same_room(make_manager, tmp_path, clock,
                                                                              monkeypatch):
    import threading

    from jlm_helpers.fakes import GB, fake

    from jupyter_llm_manager.manager.cooperation import room

    path = tmp_path / "same-instant.sqlite"
    first = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    second = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    for manager, name in ((first, "x"), (second, "y")):
        fake(manager, name, 2 * GB)
        fake(manager, "warm", GB // 100)
    load_meanwhile(clock, (first, "warm"), (second, "warm"))  # both are members, as kernels that loaded before
    published(path, ["loaded", "loaded"])
    read = room.others_from
    both_read = threading.Barrier(2, timeout=0.3)
    calls = []

    def others_then_wait(*args, **kwargs):
        found = read(*args, **kwargs)
        calls.append(found)
        if len(calls) <= 2:  # each request's first look: wait until the other has looked too, if it can
            try:
                both_read.wait()
            except threading.BrokenBarrierError:
                pass
        return found

    monkeypatch.setattr(room, "others_from", others_then_wait)
    load_meanwhile(clock, (first, "x"), (second, "y"))
    states = {first.row("x").state, second.row("y").state}
    assert states == {"loaded", "registered"}, (f"both took the same 3 GB: x and y are {states}; "
                                                f"{[str(e) for m in (first, second) for e in m.events(None)]}")
    evictions = [(e.model_id, e.reason) for m in (first, second) for e in m.events(None) if e.kind == "evicted"]
    assert ("x", "other_kernel") in evictions or ("y", "other_kernel") in evictions  # the later one asked


def test_a_placement_is_one_transaction_that_excludes_others_and_never_waits_for_ever(tmp_path):
    """Reading the others and writing a reservation is one SQLite write transaction (BEGIN IMMEDIATE)."""
    import threading

    import psutil

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger, LedgerBusy, MemberRow, ModelRow

    path = tmp_path / "ledger.sqlite"
    first, second = Ledger(path), Ledger(path)  # two connections, as two kernels have
    started = psutil.Process().create_time()
    me = MemberRow("first", os.getpid(), started, "", "first.ipynb", "", time.time())
    them = MemberRow("second", os.getpid(), started, "", "second.ipynb", "", time.time())
    seen: list[list[str]] = []
    inside = threading.Event()
    try:
        with first.placement("first", wait=5) as placing:
            assert placing.others() == ([], [], [])

            def second_places() -> None:
                inside.set()
                with second.placement("second", wait=30) as theirs:  # waits for the first to commit
                    seen.append([row.model_id for row in theirs.others()[1]])
                    theirs.publish(them, [])

            other = threading.Thread(target=second_places)
            other.start()
            assert inside.wait(5)
            other.join(0.3)
            assert other.is_alive()  # the second placement waits: it cannot read before the first has written
            placing.publish(me, [ModelRow("first", "k", "big", "cpu", 10, "loading", False, 1, time.time(), 0, False)])
        other.join(10)
        assert seen == [["big"]]  # it saw the reservation the first wrote in its transaction
        with first.placement("first", wait=5):
            began = time.monotonic()
            with pytest.raises(LedgerBusy), second.placement("second", wait=0.2):
                pass  # never runs: a holder that keeps the ledger locked is not waited for beyond the wait
            assert time.monotonic() - began < 5
        assert {m.member for m in second.members()} == {"first", "second"}
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    finally:
        first.close()
        second.close()


def test_a_forked_child_uses_a_connection_of_its_own(tmp_path):
    import psutil

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow

    path = tmp_path / "ledger.sqlite"
    ledger = Ledger(path)
    started = psutil.Process().create_time()
    ledger.publish(MemberRow("parent", os.getpid(), started, "", "parent.ipynb", "", time.time()), [])
    pid = os.fork()
    if pid == 0:  # the child writes through the same Ledger object, then exits without cleaning up
        code = 1
        try:
            child = psutil.Process().create_time()
            ledger.publish(MemberRow("child", os.getpid(), child, "", "child.py", "", time.time()), [])
            code = 0 if ledger._connection is not None else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    rows = ledger._run("SELECT member FROM members")  # the parent's connection still works after the child left
    assert {row[0] for row in rows} == {"parent", "child"}
    ledger.close()


def test_without_unix_sockets_or_fcntl_the_package_works_alone_and_says_why(tmp_path):
    import subprocess
    import sys

    script = tmp_path / "no_sockets.py"
    script.write_text(
        "import socket, sys\n"
        "sys.modules['fcntl'] = None  # no fcntl: importing it raises ImportError\n"
        "del socket.AF_UNIX  # before anything is imported: psutil too is imported without it\n"
        "from jupyter_llm_manager import LLMManager\n"
        "def load_thing(spec):\n"
        "    return {'weights': bytearray(1000)}\n"
        "manager = LLMManager(config_path=False, preload=False)\n"
        "manager.register('thing', loader='__main__:load_thing', required_memory='1MB')\n"
        "manager.load('thing')\n"
        "report = manager.machine()\n"
        "print(manager.row('thing').state, report.cooperating, report.reason)\n"
        "manager.close()\n")
    done = subprocess.run([sys.executable, str(script)], check=False, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "JUPYTER_LLM_MANAGER_LEDGER": str(tmp_path / "ledger.sqlite")})
    assert done.returncode == 0, done.stderr
    state, cooperating, reason = done.stdout.strip().split(" ", 2)
    assert (state, cooperating) == ("loaded", "False") and "Unix domain sockets" in reason
    assert not (tmp_path / "ledger.sqlite").exists()


@pytest.mark.slow
def test_kernels_loading_and_unloading_killed_and_stopped_never_over_commit_one_budget(tmp_path):
    """The load test, short: five kernels for 10 s on one budget, two SIGKILLed and one SIGSTOPped meanwhile."""
    from jlm_helpers.benchmarks import benchmark

    report = benchmark("machine_stress").run_machine_stress(processes=5, seconds=10, folder=tmp_path)
    print(report)  # the peak against the budget, in the test's output
    assert report.peak <= report.budget, str(report)
    assert report.hung == [] and report.finished == report.processes - report.killed, str(report)
    assert report.operations.get("load", 0) + report.operations.get("use", 0) > 20, str(report)


def test_a_request_waiting_for_another_kernels_model_is_woken_when_its_lease_ends(make_manager, tmp_path):
    """No look at the ledger on a timer is needed: the clock never moves here, so only the wake-up can serve it."""
    import threading

    from jlm_helpers.fakes import GB, fake, lease_elsewhere

    path = tmp_path / "wake.sqlite"
    holder = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    asker = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    fake(holder, "theirs", 2 * GB)
    fake(asker, "mine", 2 * GB)
    thread, let_go = lease_elsewhere(holder, "theirs")
    loading = threading.Thread(target=asker.load, args=("mine",), kwargs={"wait": math.inf}, daemon=True)
    loading.start()
    queued(path, 1)
    let_go.set()
    thread.join(10)
    loading.join(20)
    assert not loading.is_alive(), "the waiting request was never woken"
    assert asker.row("mine").state == "loaded" and holder.row("theirs").state == "registered"



# -- waits across kernels that would never end ----------------------------------------------------------------

MB = 2**20
#: Models of the sizes they declare: two of x, y, z, w fit the budget beside each other, a third does not; v
#: fits beside none of them.
SIZED = {name: {"loader": "__main__:placeholder", "required_memory": size * MB, "device": "cpu"}
         for name, size in {"x": 10, "y": 11, "z": 12, "w": 13, "v": 16}.items()}
SIZED_BUDGET = 25 * MB


def waiting(ledger, model_id: str) -> None:
    """Wait until a request for ``model_id`` says in the ledger that it waits for another kernel's model in use."""
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    reader = Ledger(ledger)
    try:
        assert until(lambda: any(w.model_id == model_id for w in reader.waits()), 30), "the request never waited"
    finally:
        reader.close()


@pytest.mark.parametrize("wait", [math.inf, 5])
def test_two_kernels_each_holding_a_lease_and_needing_the_others_room_refuse_the_one_closing_the_cycle(kernels,
                                                                                                      wait):
    a, b = kernels("first.ipynb", "second.ipynb", models=SIZED, memory=SIZED_BUDGET)
    assert a.ask("hold", id="x")["ok"] and b.ask("hold", id="y")["ok"]  # inside `with mgr.use(...)`, each
    a.send("load", id="z", wait=wait)  # needs the room of y, in use in second.ipynb: it waits
    waiting(kernels.ledger, "z")
    refused = b.ask("load", id="w", wait=wait, timeout=30)  # needs the room of x: each would wait for the other
    assert not refused["ok"] and refused["seconds"] < 1.0, refused  # timed in the kernel: at once
    error = refused["error"]
    assert error.startswith("ResourceNotAvailableError") and "'x'" in error and "first.ipynb (pid " in error, error
    assert "'z'" in error and "`with manager.use(...)`" in error, error  # what the other waits for; what to do
    assert b.ask("release", id="y")["ok"]  # the refused side leaves its block: the other one goes on
    assert a.answer(30)["ok"]
    assert a.ask("states")["states"]["z"] == "loaded" and b.ask("states")["states"]["y"] == "registered"


def test_a_kernel_holding_a_lease_waits_for_a_model_in_use_elsewhere_when_only_it_waits(kernels):
    a, b = kernels("holds.ipynb", "uses.ipynb", models=SIZED, memory=SIZED_BUDGET)
    assert a.ask("hold", id="x")["ok"] and b.ask("hold", id="y")["ok"]
    a.send("load", id="z", wait=math.inf)
    waiting(kernels.ledger, "z")  # it decided to wait, and was not refused: the other kernel waits for nothing
    assert b.ask("release", id="y")["ok"]
    loaded = a.answer(30)
    assert loaded["ok"], loaded


def test_a_request_waiting_for_this_kernels_lease_neither_refuses_nor_queues_ahead_of_it(kernels):
    """second.ipynb waits for x, in use here; this kernel's own request needs only the room of an idle model."""
    a, b = kernels("holds.ipynb", "waits.ipynb", models=SIZED, memory=SIZED_BUDGET)
    assert a.ask("hold", id="x")["ok"] and b.ask("load", id="y")["ok"]  # y is loaded and idle
    b.send("load", id="v", wait=math.inf)  # waits for x's lease to end (first in the machine-wide queue)
    waiting(kernels.ledger, "v")
    loaded = a.ask("load", id="z", wait=10, timeout=30)  # y goes; the request for w cannot be served first
    assert loaded["ok"], loaded
    assert a.ask("release", id="x")["ok"]
    served = b.answer(30)
    assert served["ok"], served


def test_rows_of_waits_that_make_no_sense_are_ignored_and_go_with_their_member(tmp_path):
    import sqlite3
    import subprocess
    import sys

    import psutil

    from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow

    path = tmp_path / "waits.sqlite"
    ledger = Ledger(path)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ledger.publish(MemberRow("gone", child.pid, psutil.Process(child.pid).create_time(), "", "gone.ipynb", "",
                                 time.time()), [])
        with sqlite3.connect(path) as writer:
            writer.executemany("INSERT INTO waits VALUES (?, ?, ?, ?, ?, ?, ?)", [
                ("gone", 1, None, "z", '["x"]', '[["other", "y"]]', time.time()),
                ("gone", 2, None, "z", "not json", "[]", time.time()),
                ("gone", "three", None, "z", "[]", "[]", time.time()),
                ("gone", 4, "five", "z", '["x", 6]', '[["other"], ["other", "y"], 7]', time.time()),
                ("gone", 5, None, "z", "[" * 30_000 + "]" * 30_000, "[]", time.time()),  # nested past recursion
                ("gone", 6, None, "z", "[]", "[" + ", ".join(['["m", "k"]'] * 20_000) + "]", time.time())])
        found = sorted(ledger.waits(), key=lambda w: w.request)
        assert [(w.request, w.holds, w.needs, w.arrival) for w in found] == [
            (1, {"x"}, {("other", "y")}, None), (4, {"x"}, {("other", "y")}, None)]
        child.kill()
        child.wait()
        ledger.members()  # a reader drops the member that is gone, with its rows
        assert ledger.waits() == []
    finally:
        child.kill()
        child.wait()
        ledger.close()


def test_the_request_that_made_room_elsewhere_says_what_and_where_and_the_loser_is_told_once(
        make_manager, tmp_path, monkeypatch):
    """The asker's footer and events name the model it evicted in the other notebook; that notebook's next cell
    says it lost the model, once; so for a model another notebook's panel unloaded."""
    from IPython.core.interactiveshell import InteractiveShell
    from IPython.utils.capture import capture_output
    from jlm_helpers.fakes import GB, fake

    path = tmp_path / "made-room.sqlite"
    monkeypatch.setenv("JPY_SESSION_NAME", "analysis.ipynb")
    holder = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    monkeypatch.setenv("JPY_SESSION_NAME", "report.ipynb")
    asker = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    fake(holder, "smollm2", 2 * GB)
    fake(asker, "mine", 2 * GB)
    holder.load("smollm2")
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_llm_manager")
    magics = shell.magics_manager.registry["LLMMagics"]
    try:
        magics.manager = asker
        with capture_output() as captured:
            shell.run_cell("%%llm mine --wait 30\nhi")
        footer = "\n".join(o.data.get("text/plain", "") for o in captured.outputs)
        assert "made room: evicted smollm2 from analysis.ipynb (2.0 GB)" in footer, footer
        (made,) = [e for e in asker.events(None) if e.kind == "made_room"]
        assert made.model_id == "mine" and made.bytes == 2 * GB and "analysis.ipynb" in made.message
        magics.manager = holder
        fake(holder, "small", GB // 2)
        with capture_output() as captured:
            shell.run_cell("%%llm small\nhi")
        told = "\n".join(o.data.get("text/plain", "") for o in captured.outputs)
        assert "smollm2 was evicted by report.ipynb to make room, just now; it will load again" in told, told
        with capture_output() as captured:
            shell.run_cell("%%llm small\nhi")
        assert "was evicted" not in "\n".join(o.data.get("text/plain", "") for o in captured.outputs)
        (member,) = [k.member for k in asker.machine().kernels if k.notebook == "analysis.ipynb"]
        assert "unloaded 'small'" in asker.ask_to_unload(member, "small")  # a click in report.ipynb's panel
        with capture_output() as captured:
            shell.run_cell("%%llm smollm2 --wait 30\nhi")
        told = "\n".join(o.data.get("text/plain", "") for o in captured.outputs)
        assert "small was unloaded by report.ipynb, just now; it will load again" in told, told
    finally:
        magics.manager = None


def test_what_another_member_says_it_evicted_is_read_with_care():
    """An answer is another process's word: odd entries are skipped, long names cut, a member that predates the
    list says nothing."""
    from jupyter_llm_manager.manager.cooperation.peers import EvictedElsewhere, _evicted_in

    answer = {"freed": ["k"], "evicted": [{"model": "smollm2", "freed": 295_000_000, "held": 0},
                                          {"model": "x" * 500, "freed": 1, "held": 2},
                                          {"model": 3, "freed": 1}, {"model": "m", "freed": -1}, "junk", None]}
    assert _evicted_in(answer, "analysis.ipynb") == [EvictedElsewhere("smollm2", "analysis.ipynb", 295_000_000),
                                                     EvictedElsewhere("x" * 200, "analysis.ipynb", 1, 2)]
    assert _evicted_in({"freed": ["k"]}, "old.ipynb") == []
    assert _evicted_in({"evicted": "not a list"}, "odd.ipynb") == []
