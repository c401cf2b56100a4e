"""Putting an adapter on a base never overlaps a request of that base, even one that started without a turn."""

from __future__ import annotations

import threading
import time

import pytest
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


def _two_adapters(devices) -> tuple[LLMManager, SharedAdapterFake]:
    manager, backend = _manager(devices)
    manager.register("two", base="base", adapter="adapters/two")
    return manager, backend


def test_a_use_block_of_an_adapter_keeps_the_model_answering_as_that_adapter(devices):
    """Another thread's request for another adapter of the base waits until the block ends."""
    manager, backend = _two_adapters(devices)
    try:
        manager.load("two")
        answers: list[str] = []
        with manager.use("one") as lease:
            one = backend.active
            assert one == lease.loaded.adapter
            other = threading.Thread(target=lambda: answers.append(manager.generate("two", "x y", wait=30).text))
            other.start()
            assert until(lambda: any(e.kind == "waiting" and e.model_id == "two" for e in manager.events()))
            assert backend.active == one and backend.answered_as == []  # the user's own calls still run as "one"
        other.join(30)
        assert answers == ["x y"] and backend.answered_as[0] not in (None, one)
    finally:
        manager.close()


def test_inside_a_use_block_the_same_adapter_may_generate_and_another_is_refused_at_once(devices):
    manager, backend = _two_adapters(devices)
    try:
        manager.load("two")
        with manager.use("one") as lease:
            assert manager.generate("one", "same adapter", wait=1).text == "same adapter"
            started = time.monotonic()
            with pytest.raises(GenerationError, match="shares one model"):
                manager.generate("two", "another", wait=30)
            with pytest.raises(GenerationError, match="shares one model"), manager.use("two", wait=30):
                pass
            assert time.monotonic() - started < 5  # refused at once: it would wait for its own thread
            assert backend.active == lease.loaded.adapter
        assert manager.generate("two", "now it may").text == "now it may"
    finally:
        manager.close()


def test_a_stream_half_read_keeps_its_adapter_and_another_use_in_its_thread_is_refused(devices):
    manager, backend = _two_adapters(devices)
    try:
        manager.load("two")
        stream = iter(manager.stream("one", "a b c d"))
        assert next(stream) == "a"
        with pytest.raises(GenerationError, match="shares one model"), manager.use("two", wait=30):
            pass
        assert "".join(stream) == " b c d" and len(backend.answered_as) == 1
        assert backend.active == backend.answered_as[0]
    finally:
        manager.close()
