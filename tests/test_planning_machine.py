"""``plan()`` and loading agree across kernels: other kernels' models, the machine-wide queue, leases and adapters.

Several managers share one ledger and one (fake) machine, as notebooks on one
GPU do. What ``plan(ids)`` says (fits or not, what it evicts, why a model
waits) is what loading the same ids one after another, without waiting, from
the same thread, does.
"""

from __future__ import annotations

import os
import tempfile
import threading
import time
from pathlib import Path

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, FakeDevices, SharedAdapterFake, fake, lease_elsewhere

from jupyter_llm_manager import LLMManager, ResourceNotAvailableError
from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow


def machine_manager(devices: FakeDevices, backend: SharedAdapterFake, ledger: Path, **settings) -> LLMManager:
    """A manager of one kernel on the shared fake machine (its own clock: kernels do not share one)."""
    return LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda name: backend,
                      ledger_path=str(ledger), **settings)


def waiting_elsewhere(ledger: Path, model_id: str, needed: dict[str, int]) -> Ledger:
    """A request of another notebook (alive: this very process) that waits in the machine-wide queue."""
    other = Ledger(ledger)
    other.publish(MemberRow("elsewhere", os.getpid(), psutil.Process().create_time(), "", "queued.ipynb", "",
                            time.time()), [])
    other.enqueue("elsewhere", model_id, needed, 0)
    return other


def _try_load(manager: LLMManager, name: str, wait: float = 0) -> None:
    try:
        manager.load(name, wait=wait)
    except ResourceNotAvailableError:
        pass


def test_plan_and_load_agree_while_another_kernels_request_waits_in_the_machine_queue(tmp_path):
    devices = FakeDevices({"cuda:0": 16 * GB})
    backend = SharedAdapterFake(devices)
    ledger = tmp_path / "ledger.sqlite"
    holder, waiter, planner = (machine_manager(devices, backend, ledger, memory_budget={"cuda:0": 10 * GB})
                               for _ in range(3))
    fake(holder, "big", 6 * GB)
    fake(waiter, "w", 8 * GB)
    fake(planner, "p", 3 * GB)
    held: list[threading.Thread] = []
    try:
        _, let_go = lease_elsewhere(holder, "big")
        asking = threading.Thread(target=_try_load, args=(waiter, "w", 20))
        asking.start()
        held.append(asking)
        reader = Ledger(ledger)
        assert until(lambda: reader.requests()), "the waiting request never took its place in the machine's queue"
        reader.close()
        report = planner.plan(["p"])
        assert not report.fits and report.models[0].state == "waits", str(report)
        assert "queued behind w in" in report.verdict, str(report)
        (cuda,) = report.devices  # the queued claim is named as such, not counted as held
        assert (cuda.held_bytes, cuda.claimed_bytes) == (6 * GB, 8 * GB), str(report)
        assert "held 6.0 GB, claimed by requests ahead 8.0 GB" in str(report)
        with pytest.raises(ResourceNotAvailableError, match="queued behind w in .* in the machine-wide queue"):
            planner.load("p", wait=0)
        let_go.set()
    finally:
        for thread in held:
            thread.join(30)
        for manager in (holder, waiter, planner):
            manager.close()


def test_a_load_returns_once_the_others_read_it_as_loaded_so_their_plan_and_load_agree_at_once(tmp_path):
    """No window after a load returns in which other kernels still read it as loading (a plan right then said
    "would wait for big loading", and a load right after it could find it loaded)."""
    devices = FakeDevices({"cuda:0": 16 * GB})
    backend = SharedAdapterFake(devices)
    ledger = tmp_path / "ledger.sqlite"
    holder, planner = (machine_manager(devices, backend, ledger, memory_budget={"cuda:0": 10 * GB})
                       for _ in range(2))
    reader = Ledger(ledger)
    try:
        for round_ in range(5):
            fake(holder, f"big{round_}", 6 * GB)
            fake(planner, f"p{round_}", 3 * GB)
            holder.load(f"big{round_}")
            assert {m.model_id: m.state for m in reader.models()}[f"big{round_}"] == "loaded"
            report = planner.plan([f"p{round_}"])
            assert report.fits and "loading" not in str(report), str(report)
            planner.load(f"p{round_}", wait=0)
            holder.unload(f"big{round_}")
            planner.unload(f"p{round_}")
    finally:
        reader.close()
        holder.close()
        planner.close()


def test_plan_and_load_agree_inside_a_use_block_of_the_same_thread(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    with manager.use("a"):
        report = manager.plan(["b"])
        assert not report.fits and report.models[0].state == "refused", str(report)
        assert "this thread" in report.verdict or "this thread" in report.models[0].note, str(report)
        with pytest.raises(ResourceNotAvailableError, match="this thread holds them"):
            manager.load("b", wait=30)  # refused at once: waiting for itself would never end
        assert "leave the `with manager.use(...)` block" in report.advice.lower(), report.advice  # not memory advice
    assert manager.plan(["b"]).fits


def test_plan_says_why_memory_is_short_inside_a_use_block_and_by_how_much(make_manager):
    manager = make_manager(memory_budget={"cuda:0": 10 * GB})
    fake(manager, "a", 6 * GB)
    fake(manager, "b", 6 * GB)
    fake(manager, "c", 2 * GB)
    manager.load("c")
    with manager.use("a"):
        report = manager.plan(["b"])
        with pytest.raises(ResourceNotAvailableError, match="this thread holds them"):
            manager.load("b", wait=30)
    (row,) = report.models
    assert row.state == "refused" and row.note == "needs 6.0 GB on cuda:0, only 4.0 GB can be made free: this " \
                                                   "thread holds them", str(report)
    assert "(cuda:0 short by 2.0 GB)" in report.verdict, str(report)  # c may go: 2 GB short, not 4
    assert report.advice.startswith("Leave the `with manager.use(...)` block"), report.advice


def test_a_plan_that_loads_a_base_then_its_adapter_never_evicts_that_base_for_the_adapter(tmp_path):
    """The adapter's bytes need room: the plan makes it as loading does (another idle model goes, never the base
    the adapter goes onto, even when the base is the least valuable). Hypothesis found the plan evicting it."""
    devices = FakeDevices({"cuda:0": 16 * GB})
    backend = SharedAdapterFake(devices)
    me = machine_manager(devices, backend, tmp_path / "ledger.sqlite")
    try:
        fake(me, "y", GB, priority=1)
        fake(me, "a", 5 * GB)
        me.register("t1", base="a", adapter="adapters/t1")
        me.load("y")
        me.configure(memory_budget={"cuda:0": 6 * GB})  # a and y fill it: t1's slice needs y gone
        evicted: list[str] = []
        me.subscribe(lambda event: evicted.append(event.model_id) if event.kind == "evicted" else None)
        report = me.plan(["a", "t1"])
        assert report.fits and set(report.evictions) == {"y"}, str(report)
        for name in ("a", "t1"):
            me.load(name, wait=0)
        assert evicted == ["y"] and {row.id for row in me.status() if row.state == "loaded"} == {"a", "t1"}
    finally:
        me.close()


def test_a_plan_evicts_the_other_kernels_older_idle_model_for_its_second_load_as_loading_does(tmp_path):
    """Two loads of this kernel after three idle models of another fill the budget: the plan evicts the other's
    least recently used model for the second load, as loading does; it never picks the first load, used later."""
    devices = FakeDevices({"cuda:0": 16 * GB})
    backend = SharedAdapterFake(devices)
    me = machine_manager(devices, backend, tmp_path / "ledger.sqlite")
    other = machine_manager(devices, backend, tmp_path / "ledger.sqlite")
    try:
        for name in "abcd":
            fake(me, name, GB)
        for name in "xyz":
            fake(other, name, GB)
            other.load(name, wait=0)
        assert until(lambda: len([m for m in me.machine().models if not m.this]) == 3)
        me.configure(memory_budget={"cuda:0": 4 * GB})
        evicted: list[str] = []
        other.subscribe(lambda event: evicted.append(event.model_id) if event.kind == "evicted" else None)
        report = me.plan(["a", "b"])
        assert report.fits and report.evictions == ("x",), str(report)
        for name in ("a", "b"):
            me.load(name, wait=0)
        assert evicted == ["x"] and {row.id for row in me.status() if row.state == "loaded"} == {"a", "b"}
    finally:
        me.close()
        other.close()


# -- the property, across kernels --------------------------------------------------------------------------

MINE = "abcd"
THEIRS = ("x", "y", "z")

sizes = st.integers(1, 6).map(lambda n: n * GB)
mine = st.lists(st.fixed_dictionaries({"size": sizes, "priority": st.integers(0, 2), "protected": st.booleans(),
                                       "pinned": st.booleans()}), min_size=1, max_size=len(MINE))
theirs = st.lists(st.fixed_dictionaries({"size": sizes, "priority": st.integers(0, 2), "protected": st.booleans(),
                                         "pinned": st.booleans(), "leased": st.booleans()}),
                  max_size=len(THEIRS))
limits = st.fixed_dictionaries({
    "max_loaded_models": st.none() | st.integers(1, 4),
    "memory_budget": st.none() | st.integers(4, 16).map(lambda n: {"cuda:0": n * GB}),
    "max_loaded_adapters": st.integers(1, 3),
})


@pytest.mark.slow
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registry=mine, others=theirs, chosen=limits, data=st.data())
def test_plan_fits_exactly_when_loading_in_order_leaves_all_loaded_across_kernels(registry, others, chosen, data):
    """Other kernels' idle, leased and pinned models, a request queued elsewhere, this thread's own lease and
    LoRA adapters (sharing their base) are in both the plan and the loads."""
    folder = Path(tempfile.mkdtemp(prefix="jlm-plan-"))
    devices = FakeDevices({"cpu": 16 * GB, "cuda:0": 16 * GB})
    backend = SharedAdapterFake(devices)
    # Real clocks in both kernels: their models are compared by when they were last used, on the wall clock, and a
    # fake clock running ahead would make this kernel's loads look older than the other's earlier ones.
    me = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda name: backend,
                    ledger_path=str(folder / "ledger.sqlite"))
    other = machine_manager(devices, backend, folder / "ledger.sqlite")
    names = list(MINE[:len(registry)])
    for name, model in zip(names, registry):
        fake(me, name, model["size"], priority=model["priority"], protected=model["protected"], pinned=model["pinned"])
    me.register("t1", base=names[0], adapter="adapters/t1")
    me.register("t2", base=names[0], adapter="adapters/t2")
    holders: list[tuple[threading.Thread, threading.Event]] = []
    queued: Ledger | None = None
    try:
        for name, model in zip(THEIRS, others):
            fake(other, name, model["size"], priority=model["priority"], protected=model["protected"],
                 pinned=model["pinned"])
            _try_load(other, name)
            if model["leased"] and other.row(name).state == "loaded":
                holders.append(lease_elsewhere(other, name))
        other._parts.cooperation.publish_soon()  # a lease is published with the next heartbeat: now, here
        shown = {row.id: (row.state, row.in_use) for row in other.status() if row.state == "loaded"}
        assert until(lambda: {m.model_id: (m.state, m.in_use) for m in me.machine().models if not m.this} == shown)
        loaded = data.draw(st.lists(st.sampled_from(names + ["t1"]), unique=True), label="loaded first")
        for name in loaded:
            _try_load(me, name)
        me.configure(**chosen)
        if data.draw(st.booleans(), label="a request of another notebook waits"):
            queued = waiting_elsewhere(folder / "ledger.sqlite", "q", {"cuda:0": data.draw(sizes, label="it needs")})
        own_lease = data.draw(st.sampled_from([None, *names]), label="this thread holds a lease on")
        ids = data.draw(st.lists(st.sampled_from(names + ["t1", "t2"]), min_size=1, unique=True), label="ids")
        evicted: list[str] = []
        for manager in (me, other):
            manager.subscribe(lambda event: evicted.append(event.model_id) if event.kind == "evicted" else None)
        lease = me.use(own_lease, wait=0) if own_lease and me.row(own_lease).state == "loaded" else None
        if lease is not None:
            lease.__enter__()
        try:
            report = me.plan(ids)
            for name in ids:
                _try_load(me, name)
            after = {row.id for row in me.status() if row.state == "loaded"}
        finally:
            if lease is not None:
                lease.__exit__(None, None, None)
        assert report.fits == all(name in after for name in ids), str(report)
        if report.fits:
            assert set(report.evictions) == set(evicted), str(report)
    finally:
        for thread, let_go in holders:
            let_go.set()
            thread.join(10)
        if queued is not None:
            queued.close()
        other.close()
        me.close()
