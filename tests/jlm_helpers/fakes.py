"""A fake backend, fake devices and a fake clock for fast, deterministic policy tests.

The fake devices report free memory as total minus the bytes of fake models
still alive, so "memory really comes back" is observable: a fake model that
someone still references keeps its bytes in use.
"""

from __future__ import annotations

import re
import threading
import time
import weakref
from typing import Any

from jupyter_llm_manager.backends import Backend, LoadedModel, Placement
from jupyter_llm_manager.devices import DeviceMemory
from jupyter_llm_manager.errors import ModelLoadingError, OutOfMemoryDuringLoad
from jupyter_llm_manager.generation import AnswerFilter, GenerationParams, GenerationResult
from jupyter_llm_manager.reports import MemoryEstimate

GB = 1000**3


def fake(manager: Any, model_id: str, size: int = GB, *, device: str = "cuda:0", source: str | None = None,
         options: dict[str, Any] | None = None, **fields: Any) -> Any:
    """Register a fake model of ``size`` bytes (the fake backend's ``options``: fail, estimate, check_free).

    Each id gets its own weights unless ``source`` is shared; other keywords
    are spec fields (kind, priority, pinned, keep_alive...).
    """
    return manager.register(model_id, source or f"fake/{model_id}", backend="fake", device=device,
                            options={"size": size, **(options or {})}, **fields)


def lease_elsewhere(manager: Any, model_id: str) -> tuple[threading.Thread, threading.Event]:
    """Hold a lease on ``model_id`` in another thread (a cell generating); returns once it is held.

    Set the returned event to end the lease; join the thread to wait for that.
    """
    held, let_go = threading.Event(), threading.Event()

    def hold() -> None:
        with manager.use(model_id):
            held.set()
            let_go.wait(30)

    holder = threading.Thread(target=hold, name=f"test-lease-{model_id}")
    holder.start()
    assert held.wait(30), f"the lease on {model_id!r} was never granted"
    return holder, let_go


class FakeClock:
    """The manager's monotonic clock, moved only by :meth:`advance`.

    A wait with a deadline on this clock (``wait(condition, timeout)``, which
    the manager calls) ends when the manager notifies it or when the clock is
    advanced: a test decides when a timeout passes, so nothing depends on how
    fast the machine is. A wait that should not happen blocks until the test's
    own join timeout says so.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start
        self._waiting: weakref.WeakSet[threading.Condition] = weakref.WeakSet()
        self._lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
        with self._lock:
            waiting = list(self._waiting)
        for condition in waiting:
            with condition:
                condition.notify_all()

    def wait(self, condition: threading.Condition, timeout: float | None) -> None:
        """Wait (the condition's lock held) until notified, or a moment; the caller looks at the clock again after.

        The moment lets a simulated Ctrl-C (``_thread.interrupt_main``), which wakes no blocked lock,
        reach a waiting main thread, as a real SIGINT would.
        """
        if timeout is not None:
            with self._lock:
                self._waiting.add(condition)
        condition.wait(0.05)


class FakeModel:
    """Stands for a model: occupies ``size`` bytes on ``device`` while alive."""

    def __init__(self, devices: FakeDevices, device: str, size: int, name: str) -> None:
        self.name = name
        self.device = device
        self.size = size
        devices.allocate(device, size)
        weakref.finalize(self, devices.release, device, size)


class FakeDevices:
    """A device probe with fixed totals; free memory follows the fake models alive."""

    def __init__(self, totals: dict[str, int] | None = None, others: dict[str, int] | None = None) -> None:
        self.totals = totals or {"cpu": 64 * GB, "cuda:0": 24 * GB}
        self.used = {device: 0 for device in self.totals}
        self.others = dict(others or {})  # bytes taken by "other processes"
        self._lock = threading.Lock()

    def allocate(self, device: str, size: int) -> None:
        with self._lock:
            self.used[device] += size

    def release(self, device: str, size: int) -> None:
        with self._lock:
            self.used[device] -= size

    def __call__(self) -> list[DeviceMemory]:
        with self._lock:
            return [DeviceMemory(d, f"fake {d}", total, total - self.used[d] - self.others.get(d, 0), "fake")
                    for d, total in self.totals.items()]


class FakeBackend(Backend):
    """Sizes come from ``options.size`` (bytes); ``options.fail`` makes loads fail.

    ``options.fail``: ``"error"`` raises after allocating, ``"oom"`` raises an
    out-of-memory error, ``"oom_once"`` only on the first try; ``options.check_free``
    raises out-of-memory when the device has less free memory than the model. ``gate`` (an
    Event) makes loads of ``gated`` sources wait, for concurrency tests.
    """

    name = "fake"

    def __init__(self, devices: FakeDevices, *, kinds: set[str] | None = None) -> None:
        self.devices = devices
        self.kinds = kinds or {"cpu", "cuda"}
        self.loads: list[str] = []
        self.prompts: list[Any] = []  # every prompt streamed, as the backend received it
        self.attempts: dict[str, int] = {}
        self.gates: dict[str, threading.Event] = {}
        self.entered: dict[str, threading.Event] = {}
        self.lock = threading.Lock()

    def device_kinds(self) -> set[str]:
        return set(self.kinds)

    def estimate(self, spec: Any) -> MemoryEstimate:
        size = int(spec.options.get("size", GB))
        estimated = int(spec.options.get("estimate", size))
        return MemoryEstimate(spec.id, estimated, 0, 0, estimated, "fake", "fake", "fake")

    def gate(self, model_id: str) -> tuple[threading.Event, threading.Event]:
        """(entered, release): the load of ``model_id`` signals ``entered`` and waits for ``release``."""
        self.entered[model_id] = threading.Event()
        self.gates[model_id] = threading.Event()
        return self.entered[model_id], self.gates[model_id]

    def load(self, spec: Any, placement: Placement) -> LoadedModel:
        with self.lock:
            self.attempts[spec.id] = self.attempts.get(spec.id, 0) + 1
            attempt = self.attempts[spec.id]
        if spec.id in self.gates:
            self.entered[spec.id].set()
            assert self.gates[spec.id].wait(10), "test gate never opened"
        size = int(spec.options.get("size", GB))
        device = placement.devices[0]
        if spec.options.get("check_free"):  # like a real allocator: fails when the device is full
            free = {m.device: m.free_bytes for m in self.devices()}[device]
            if free < size:
                raise OutOfMemoryDuringLoad(f"fake OOM: {size} bytes asked, {free} free", model_id=spec.id,
                                            devices=(device,))
        model = FakeModel(self.devices, device, size, spec.id)
        fail = spec.options.get("fail")
        if fail == "error":
            raise ModelLoadingError(f"fake failure loading {spec.id}", model_id=spec.id)
        if fail == "oom" or (fail == "oom_once" and attempt == 1):
            raise OutOfMemoryDuringLoad(f"fake OOM loading {spec.id}", model_id=spec.id, devices=(device,))
        if fail == "interrupt":
            raise KeyboardInterrupt
        with self.lock:
            self.loads.append(spec.id)
        return LoadedModel(model=model, tokenizer=None, footprint={device: size})

    def stream(self, loaded: LoadedModel, prompt: Any, params: GenerationParams, *, model_id: str, raw: bool,
               stop: threading.Event):
        """An echo: the answer is the prompt, a word per token, cut at the token limit (``length``) and, under
        a repetition penalty, before a passage's third appearance (``repetition``), as the local backends do."""
        self.prompts.append(prompt)
        text = prompt if isinstance(prompt, str) else prompt[-1]["content"]
        words = re.findall(r"\s*\S+", text)
        answer = AnswerFilter((), repetition=params.stops_on_repetition)
        produced = 0
        for word in words[: params.max_new_tokens]:
            if stop.is_set():
                return GenerationResult(model_id, answer.text, len(words), produced, 0.01, "interrupted")
            produced += 1
            shown = answer.feed(word)
            if shown:
                yield shown
            if answer.stopped:
                break
        rest = answer.flush()
        if rest:
            yield rest
        cut = len(words) > params.max_new_tokens
        return GenerationResult(model_id, answer.text, len(words), produced, 0.01,
                                answer.reason or ("length" if cut else "stop"), max_new_tokens=params.max_new_tokens)


#: What one fake LoRA adapter holds (its estimate and its measured footprint agree).
ADAPTER_BYTES = 100 * 1000**2


class SharedAdapterFake(FakeBackend):
    """The fake backend, with adapters that live on the base's model (as PEFT's do); counts what runs when."""

    adapters = "shared"

    def __init__(self, devices: FakeDevices) -> None:
        super().__init__(devices)
        self.running = 0  # generations inside their backend call now
        self.overlaps: list[int] = []  # at each attach or detach: how many generations were running
        self.attaching = threading.Event()
        self.active: str | None = None  # the adapter the shared model answers as now (None: the base)
        self.answered_as: list[str | None] = []  # what each generation ran as, as PEFT's set_adapter left it

    def estimate(self, spec: Any) -> MemoryEstimate:
        found = super().estimate(spec)
        if spec.base is None:
            return found
        return MemoryEstimate(spec.id, found.weights_bytes + ADAPTER_BYTES, 0, 0, found.total_bytes + ADAPTER_BYTES,
                              "fake + adapter", "fake", "fake", adapter_bytes=ADAPTER_BYTES)

    def check_adapter(self, spec: Any, base: Any) -> None:
        """Any adapter fits (nothing to read)."""

    def attach_adapter(self, base: LoadedModel, spec: Any) -> LoadedModel:
        self.overlaps.append(self.running)
        self.attaching.set()
        device = base.model.device if isinstance(base.model, FakeModel) else "cuda:0"
        return LoadedModel(model=base.model, shared=True, adapter=spec.id, footprint={device: ADAPTER_BYTES})

    def detach_adapter(self, loaded: LoadedModel) -> None:
        self.overlaps.append(self.running)
        loaded.model = None

    def use_adapter(self, loaded: LoadedModel) -> None:
        """The shared model answers as ``loaded`` (its adapter, or the base)."""
        self.active = loaded.adapter

    def stream(self, loaded: LoadedModel, prompt: Any, params: GenerationParams, *, model_id: str, raw: bool,
               stop: threading.Event):
        self.use_adapter(loaded)  # as the transformers backend does at the start of each request
        with self.lock:
            self.running += 1
            self.answered_as.append(self.active)
        try:
            return (yield from super().stream(loaded, prompt, params, model_id=model_id, raw=raw, stop=stop))
        finally:
            with self.lock:
                self.running -= 1



def count_unloads(manager, monkeypatch) -> list[float]:
    """When each ``manager.unload`` call of an action started (a waiting Unload tries again and again)."""
    tries: list[float] = [0.0]
    unload = manager.unload

    def counted(*args, **kwargs):
        tries.append(time.monotonic())
        if len(tries) == 2:
            tries[0] = tries[1]
        return unload(*args, **kwargs)

    monkeypatch.setattr(manager, "unload", counted)
    return tries
