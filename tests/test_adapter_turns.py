"""Putting an adapter on a base never overlaps a request of that base, even one that started without a turn."""

from __future__ import annotations

import threading

from jlm_helpers.conditions import until
from jlm_helpers.fakes import SharedAdapterFake, fake

from jupyter_llm_manager import GenerationError, LLMManager


def _manager(devices) -> tuple[LLMManager, SharedAdapterFake]:
    backend = SharedAdapterFake(devices)
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda name: backend)
    fake(manager, "base")
    manager.register("one", base="base", adapter="adapters/one")
    return manager, backend


def _turns(manager: LLMManager, model_id: str):
    return manager._parts.state.instances[manager.row(model_id).instance].turns


def test_the_first_adapter_waits_for_a_base_generation_that_started_without_a_turn(devices):
    manager, backend = _manager(devices)
    try:
        stream = iter(manager.stream("base", "a b c d", max_new_tokens=4))
        assert next(stream) == "a"  # the base generates; no adapter is on it yet, so it took no turn
        loaded: list[object] = []
        loader = threading.Thread(target=lambda: loaded.append(manager.load("one")))
        loader.start()
        assert until(lambda: backend.attaching.is_set() or _turns(manager, "base").waiting > 0)
        assert not backend.attaching.is_set()  # it waits for the base's generation to end
        assert "".join(stream) == " b c d"
        loader.join(30)
        assert loaded and backend.overlaps == [0]
        assert manager.row("one").state == "loaded"
    finally:
        manager.close()


def test_once_an_adapter_is_on_a_base_the_base_takes_turns_with_it(devices):
    manager, backend = _manager(devices)
    try:
        manager.load("one")
        stream = iter(manager.stream("base", "a b c", max_new_tokens=3))
        assert next(stream) == "a"
        other: list[str] = []
        adapter = threading.Thread(target=lambda: other.append(manager.generate("one", "x y", wait=30).text))
        adapter.start()
        assert until(lambda: _turns(manager, "base").waiting > 0)
        assert backend.running == 1 and other == []
        assert "".join(stream) == " b c"
        adapter.join(30)
        assert other == ["x y"]
    finally:
        manager.close()


def test_a_thread_with_a_base_stream_open_cannot_start_a_second_request_once_adapters_are_on(devices):
    manager, _ = _manager(devices)
    try:
        stream = iter(manager.stream("base", "a b c", max_new_tokens=3))
        next(stream)
        manager.load("one")  # the base's request in flight is this thread's own: the load goes ahead
        try:
            manager.generate("base", "x", wait=1)
            raise AssertionError("a second request of the same thread on a serial base would wait for itself")
        except GenerationError as error:
            assert "finish or close that stream first" in str(error)
        assert "".join(stream) == " b c"
        assert manager.generate("base", "x y").text == "x y"
    finally:
        manager.close()
