"""``plan()`` is admission's own decision, simulated: what it says is what loading does.

The property: over random registries, limits, loaded sets and leases held
elsewhere, ``plan(ids).fits`` is true exactly when loading the same ids one
after another, without waiting, ends with all of them loaded at once; and
what it says it evicts is what the loads evict (the fake backend's loaded size
equals its estimate).
"""

from __future__ import annotations

import threading

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jlm_helpers.fakes import GB, FakeBackend, FakeClock, FakeDevices, fake, lease_elsewhere

from jupyter_llm_manager import LLMManager, ResourceNotAvailableError

NAMES = "abcdef"

models = st.lists(st.fixed_dictionaries({
    "size": st.integers(1, 6).map(lambda n: n * GB),
    "device": st.sampled_from(["cuda:0", "cpu", "auto"]),
    "priority": st.integers(0, 2),
    "protected": st.booleans(),
    "pinned": st.booleans(),
}), min_size=1, max_size=len(NAMES))

limits = st.fixed_dictionaries({
    "max_loaded_models": st.none() | st.integers(1, 4),
    "memory_budget": st.none() | st.dictionaries(st.sampled_from(["cuda:0", "cpu"]),
                                                 st.integers(2, 14).map(lambda n: n * GB), min_size=1),
    "max_memory_per_model": st.none() | st.integers(2, 6).map(lambda n: n * GB),
})


def build(registry: list[dict], clock: FakeClock) -> LLMManager:
    devices = FakeDevices({"cpu": 16 * GB, "cuda:0": 16 * GB})
    backend = FakeBackend(devices)
    manager = LLMManager(config_path=False, preload=False, memory_fraction=1.0, device_probe=devices,
                         backend_factory=lambda name: backend, clock=clock)
    for name, model in zip(NAMES, registry):
        fake(manager, name, model["size"], device=model["device"], priority=model["priority"],
             protected=model["protected"], pinned=model["pinned"])
    return manager


def load_if_it_can(manager: LLMManager, name: str) -> None:
    try:
        manager.load(name, wait=0)
    except ResourceNotAvailableError:
        pass


@pytest.mark.slow
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(registry=models, chosen=limits, data=st.data())
def test_plan_fits_exactly_when_loading_the_ids_in_order_leaves_them_all_loaded(registry, chosen, data):
    names = list(NAMES[:len(registry)])
    loaded = data.draw(st.lists(st.sampled_from(names), unique=True), label="loaded first")
    leased = data.draw(st.lists(st.sampled_from(loaded), unique=True) if loaded else st.just([]), label="leased")
    ids = data.draw(st.lists(st.sampled_from(names), min_size=1, unique=True), label="ids")
    clock = FakeClock()
    manager = build(registry, clock)
    holders: list[tuple[threading.Thread, threading.Event]] = []
    try:
        for name in loaded:  # no limits yet, but the devices' size: what does not fit evicts or is refused
            load_if_it_can(manager, name)
            clock.advance(1)
        manager.configure(**chosen)  # lowered limits evict what they may, the rest stays pending
        holders = [lease_elsewhere(manager, name) for name in leased if manager.row(name).state == "loaded"]
        report = manager.plan(ids)
        evicted: list[str] = []
        manager.subscribe(lambda event: evicted.append(event.model_id) if event.kind == "evicted" else None)
        for name in ids:
            clock.advance(1)
            load_if_it_can(manager, name)
        after = {row.id for row in manager.status() if row.state == "loaded"}
        assert report.fits == all(name in after for name in ids), str(report)
        if report.fits:
            assert set(report.evictions) == set(evicted), str(report)
    finally:
        for thread, let_go in holders:
            let_go.set()
            thread.join(10)
        manager.close()


@pytest.mark.parametrize("cap, expected", [(2, True), (1, False)])
def test_a_plan_that_evicts_its_own_earlier_model_does_not_fit_and_says_which(make_manager, cap, expected):
    manager = make_manager(max_loaded_models=cap)
    fake(manager, "a")
    fake(manager, "b")
    report = manager.plan(["a", "b"])
    assert report.fits is expected
    if not expected:
        (first, second) = report.models
        assert first.state == "evicted" and "b" in first.note and "max_loaded_models=1" in report.verdict
        assert second.state == "admitted"


def test_plan_agrees_with_load_on_max_memory_per_model(make_manager):
    manager = make_manager(max_memory_per_model="100KB")
    fake(manager, "a", 20 * 1000**2)
    report = manager.plan(["a"])
    assert not report.fits and report.models[0].state == "refused" and "max_memory_per_model" in report.verdict
    with pytest.raises(ResourceNotAvailableError, match="max_memory_per_model"):
        manager.load("a", wait=0)
