"""A manager nothing refers to any more is collected, with its threads and its models.

Each test makes a manager whose subscriber refers to it (a closure, as a
notebook's callback would), lets one of its threads do work that runs that
subscriber or reaches the manager, drops the last reference and checks that
the garbage collector takes it: its models' memory comes back and its
threads end. Cooperation is on (the default), so the ledger's publisher and
the listener run too.
"""

from __future__ import annotations

import gc
import threading
import time
import weakref
from collections.abc import Callable

import pytest
from jlm_helpers.conditions import until
from jlm_helpers.fakes import FakeBackend, FakeDevices, fake

from jupyter_llm_manager import LLMManager

MB = 1000**2


def _manager_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith("llm-manager") and t.is_alive()}


def _collected(ref: weakref.ref, seconds: float = 5.0) -> bool:
    """Collect garbage until ``ref`` is dead or ``seconds`` have passed."""
    deadline = time.monotonic() + seconds
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.05)
    return ref() is None


def _threads_end(threads: set[threading.Thread], seconds: float = 5.0) -> list[str]:
    for thread in threads:
        thread.join(max(seconds, 0))
    return sorted(t.name for t in threads if t.is_alive())


def _manager(devices: FakeDevices, backend: FakeBackend, *models: str, **settings) -> LLMManager:
    """A manager over the fake devices with 10 MB CPU ``models`` registered."""
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda name: backend,
                         **settings)
    for name in models:
        fake(manager, name, 10 * MB, device="cpu")
    return manager


def _forgotten(devices: FakeDevices, make: Callable[[], weakref.ref], before: set[threading.Thread]) -> None:
    """Run ``make`` (which keeps no reference), then check the manager, its threads and its models are gone."""
    ref = make()
    started = _manager_threads() - before
    assert started, "the scenario started none of the manager's threads"
    assert _collected(ref), "the manager outlived its last reference"
    assert _threads_end(started) == []
    assert all(memory.free_bytes == memory.total_bytes for memory in devices()), "its models' memory stayed held"


@pytest.fixture
def other(devices, backend):
    """Another manager on the same ledger (another kernel of this machine, in this process)."""
    manager = _manager(devices, backend)
    yield manager
    manager.close()


def test_the_keep_alive_thread_lets_a_forgotten_manager_go(devices, backend):
    """The reaper runs a subscriber that loads another model; then nothing refers to the manager."""
    before = _manager_threads()

    def make() -> weakref.ref:
        manager = _manager(devices, backend, "x0", "x1", keep_alive="1s")
        x1_loaded = threading.Event()
        manager.subscribe(lambda e: manager.load("x1") if e.kind in ("evicted", "unloaded") and e.model_id == "x0"
                          else None)
        manager.subscribe(lambda e: x1_loaded.set() if e.kind == "loaded" and e.model_id == "x1" else None)
        manager.load("x0")
        assert x1_loaded.wait(20), "the keep-alive never evicted x0"
        assert {r.id: r.state for r in manager.status()}["x1"] == "loaded"
        return weakref.ref(manager)

    _forgotten(devices, make, before)


def test_the_ledger_publisher_lets_a_forgotten_manager_go(devices, backend, other):
    """The publisher has written the manager's rows (its event bus reaches a subscriber holding the manager)."""
    before = _manager_threads()

    def make() -> weakref.ref:
        manager = _manager(devices, backend, "x0")
        manager.subscribe(lambda e: manager.status() if e.kind == "loaded" else None)
        manager.load("x0")
        member = manager.machine().kernels[0].member
        assert until(lambda: any(m.member == member and m.state == "loaded" for m in other.machine().models)), \
            "the publisher never wrote the load"
        return weakref.ref(manager)

    _forgotten(devices, make, before)


def test_the_listener_lets_a_forgotten_manager_go(devices, backend, other):
    """The listener answered another manager's request (an unload that runs the subscriber on its thread)."""
    before = _manager_threads()

    def make() -> weakref.ref:
        manager = _manager(devices, backend, "x0", "x1")
        answered_on = []
        manager.subscribe(lambda e: (answered_on.append(threading.current_thread().name), manager.load("x1"))
                          if e.kind == "unloaded" and e.model_id == "x0" else None)
        manager.load("x0")
        said = other.ask_to_unload(manager.machine().kernels[0].member, "x0")
        assert said.startswith("unloaded 'x0'"), said
        assert len(answered_on) == 1 and answered_on[0] != threading.main_thread().name  # the listener's side
        return weakref.ref(manager)

    _forgotten(devices, make, before)
