"""Putting an adapter on a base never overlaps a request of that base, even one that started without a turn."""

from __future__ import annotations

import threading
import time

from jlm_helpers.fakes import FakeBackend, fake

from jupyter_llm_manager import GenerationError, LLMManager
from jupyter_llm_manager.backends import LoadedModel


class SharedAdapterFake(FakeBackend):
    """The fake backend, with adapters that live on the base's model (as PEFT's do); counts what runs when."""

    adapters = "shared"

    def __init__(self, devices) -> None:
        super().__init__(devices)
        self.running = 0  # generations inside their backend call now
        self.overlaps: list[int] = []  # at each attach or detach: how many generations were running
        self.attaching = threading.Event()

    def check_adapter(self, spec, base) -> None:
        """Any adapter fits (nothing to read)."""

    def attach_adapter(self, base: LoadedModel, spec) -> LoadedModel:
        self.overlaps.append(self.running)
        self.attaching.set()
        return LoadedModel(model=base.model, shared=True, adapter=spec.id, footprint={"cuda:0": 1000})

    def detach_adapter(self, loaded: LoadedModel) -> None:
        self.overlaps.append(self.running)
        loaded.model = None

    def stream(self, loaded, prompt, params, *, model_id, raw, stop):
        with self.lock:
            self.running += 1
        try:
            return (yield from super().stream(loaded, prompt, params, model_id=model_id, raw=raw, stop=stop))
        finally:
            with self.lock:
                self.running -= 1


def _manager(devices) -> tuple[LLMManager, SharedAdapterFake]:
    backend = SharedAdapterFake(devices)
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda name: backend)
    fake(manager, "base")
    manager.register("one", base="base", adapter="adapters/one")
    return manager, backend


def _turns(manager: LLMManager, model_id: str):
    return manager._parts.state.instances[manager.row(model_id).instance].turns


def _until(condition, timeout: float = 30.0) -> None:
    """Poll ``condition`` (the manager's own state) until it holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.005)


def test_the_first_adapter_waits_for_a_base_generation_that_started_without_a_turn(devices):
    manager, backend = _manager(devices)
    try:
        stream = iter(manager.stream("base", "a b c d", max_new_tokens=4))
        assert next(stream) == "a"  # the base generates; no adapter is on it yet, so it took no turn
        loaded: list[object] = []
        loader = threading.Thread(target=lambda: loaded.append(manager.load("one")))
        loader.start()
        _until(lambda: backend.attaching.is_set() or _turns(manager, "base").waiting > 0)
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
        _until(lambda: _turns(manager, "base").waiting > 0)
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
