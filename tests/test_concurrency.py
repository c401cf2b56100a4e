"""Threads: single-flight loads, no waiting behind another model's load, mixed real workloads."""

from __future__ import annotations

import asyncio
import gc
import random
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, FakeBackend, fake, lease_elsewhere

from jupyter_llm_manager import (
    GenerationError,
    LLMManager,
    ModelInUseError,
    ModelLoadingError,
    ResourceNotAvailableError,
)


def test_concurrent_requests_load_a_model_once(make_manager, backend):
    manager = make_manager()
    fake(manager, "a")
    entered, release = backend.gate("a")
    with ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(manager.generate, "a", "x y") for _ in range(8)]
        assert entered.wait(10)
        release.set()
        assert {f.result().text for f in futures} == {"x y"}
    assert backend.loads == ["a"] and backend.attempts["a"] == 1


def test_a_failed_load_is_reported_to_every_waiter(make_manager, backend):
    manager = make_manager()
    fake(manager, "bad", options={"fail": "error"})
    entered, release = backend.gate("bad")
    with ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(manager.load, "bad") for _ in range(4)]
        assert entered.wait(10)
        # the other three are waiting for that load (on a busy machine they may start after it began)
        assert until(lambda: manager.row("bad").in_use == 3, timeout=60), manager.row("bad")
        release.set()
        errors = [f.exception(10) for f in futures]
    assert all(isinstance(e, ModelLoadingError) for e in errors)
    assert backend.attempts["bad"] == 1


def test_using_a_loaded_model_never_waits_behind_another_load(make_manager, backend):
    manager = make_manager()
    fake(manager, "ready")
    fake(manager, "slow", device="cuda:0")
    manager.load("ready")
    entered, release = backend.gate("slow")
    loader = threading.Thread(target=manager.load, args=("slow",))
    loader.start()
    try:
        assert entered.wait(10)  # 'slow' is loading onto the same device right now

        def use_meanwhile() -> None:
            for _ in range(50):
                with manager.use("ready") as lease:
                    assert lease.model.name == "ready"
                manager.generate("ready", "quick")
                manager.status()
                manager.devices()

        worker = threading.Thread(target=use_meanwhile)
        worker.start()
        worker.join(30)
        assert not worker.is_alive()  # it would wait until the gate opens, and the test holds the gate
        assert manager.row("slow").state == "loading"
    finally:
        release.set()
        loader.join(10)
    assert manager.row("slow").state == "loaded"


def test_loads_onto_one_device_are_serialized_and_cannot_overcommit(make_manager, backend, devices):
    manager = make_manager(memory_budget="5GB")
    fake(manager, "left", size=3 * GB)
    fake(manager, "right", size=3 * GB)
    entered, release = backend.gate("left")
    outcome = {}

    def load(model_id):
        try:
            manager.load(model_id)
            outcome[model_id] = "loaded"
        except ResourceNotAvailableError:
            outcome[model_id] = "refused"

    first = threading.Thread(target=load, args=("left",))
    first.start()
    assert entered.wait(10)
    second = threading.Thread(target=load, args=("right",))
    second.start()
    second.join(0.3)
    assert second.is_alive()  # waits for the device, not racing the first load
    release.set()
    first.join(10)
    second.join(10)
    assert outcome == {"left": "loaded", "right": "loaded"}
    assert manager.row("left").state == "registered"  # evicted for 'right': 3 + 3 > 5
    assert devices.used["cuda:0"] <= 5 * GB


def test_loads_onto_different_devices_run_side_by_side(make_manager, backend):
    manager = make_manager()
    fake(manager, "gpu", device="cuda:0")
    fake(manager, "cpu", device="cpu")
    gpu_entered, gpu_release = backend.gate("gpu")
    cpu_entered, cpu_release = backend.gate("cpu")
    threads = [threading.Thread(target=manager.load, args=(m,)) for m in ("gpu", "cpu")]
    for thread in threads:
        thread.start()
    assert gpu_entered.wait(10) and cpu_entered.wait(10)  # both loads are in progress at once
    gpu_release.set()
    cpu_release.set()
    for thread in threads:
        thread.join(10)
    assert {r.state for r in manager.status()} == {"loaded"}


def test_many_threads_on_the_fake_backend_keep_the_books_straight(make_manager, devices):
    manager = make_manager(max_loaded_models=2, memory_fraction=0.5)
    for index in range(5):
        fake(manager, f"m{index}", size=(index + 2) * GB)
    expected = (ResourceNotAvailableError, ModelInUseError)
    stop = time.monotonic() + 3

    def worker(seed):
        rng = random.Random(seed)
        while time.monotonic() < stop:
            model_id = f"m{rng.randrange(5)}"
            action = rng.choice(["load", "generate", "use", "unload", "status"])
            try:
                if action == "load":
                    manager.load(model_id)
                elif action == "generate":
                    manager.generate(model_id, "a b c")
                elif action == "use":
                    with manager.use(model_id):
                        assert manager.row(model_id).state == "loaded"
                elif action == "unload":
                    manager.unload(model_id, wait=0.05)
                else:
                    manager.status()
            except expected:
                pass
            loaded = [r for r in manager.status() if r.state == "loaded"]
            assert len(loaded) <= 2

    with ThreadPoolExecutor(6) as pool:
        for future in [pool.submit(worker, seed) for seed in range(6)]:
            future.result()
    manager.unload_all()
    gc.collect()
    assert devices.used == {"cpu": 0, "cuda:0": 0}
    assert all(r.in_use == 0 for r in manager.status())


def test_threads_load_generate_and_unload_real_models_at_once(real_manager):
    references = []
    lock = threading.Lock()
    errors = []

    def worker(model_id, seed):
        rng = random.Random(seed)
        for _ in range(6):
            try:
                if rng.random() < 0.3:
                    real_manager.unload(model_id, wait=2)
                with real_manager.use(model_id) as lease, lock:
                    references.append(weakref.ref(lease.model))
                text = "".join(real_manager.stream(model_id, "Hi", max_new_tokens=4, min_new_tokens=4))
                assert isinstance(text, str)
                real_manager.generate(model_id, "Hello", max_new_tokens=3)
            except ModelInUseError:
                pass
            except Exception as error:  # noqa: BLE001 - anything else is a bug: collected for the assertion below
                errors.append(error)

    threads = [threading.Thread(target=worker, args=(m, i)) for i, m in enumerate("abab")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    real_manager.unload_all()
    gc.collect()
    assert all(ref() is None for ref in references)
    assert all(r.in_use == 0 and r.state == "registered" for r in real_manager.status())


@pytest.mark.parametrize("kind", ["load", "generate"])
def test_async_wrappers(real_manager, kind):
    import asyncio

    async def main():
        if kind == "load":
            handle = await real_manager.aload("a")
            return handle.status().state
        result = await real_manager.agenerate("a", "Hi", max_new_tokens=3, min_new_tokens=3)
        pieces = [piece async for piece in real_manager.astream("b", "Hi", max_new_tokens=5, min_new_tokens=5)]
        return result.completion_tokens, "".join(pieces) != ""

    assert asyncio.run(main()) == ("loaded" if kind == "load" else (3, True))


def test_cancelling_an_async_stream_stops_the_generation(real_manager):
    import asyncio

    async def main():
        pieces = []

        async def consume():
            async for piece in real_manager.astream("b", "Hi", max_new_tokens=3000, min_new_tokens=3000):
                pieces.append(piece)

        task = asyncio.create_task(consume())
        while len(pieces) < 2:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return len(pieces)

    assert asyncio.run(main()) < 3000
    assert real_manager.row("b").in_use == 0


def test_status_devices_and_plan_never_raise_or_block_while_models_come_and_go(make_manager, backend):
    manager = make_manager(max_loaded_models=3)
    for model_id in "abcd":
        fake(manager, model_id)
    fake(manager, "gated")
    entered, release = backend.gate("gated")
    gated = threading.Thread(target=manager.load, args=("gated",))
    gated.start()  # a load that stays in flight the whole time: a view must never wait for it
    assert entered.wait(10)
    churned = threading.Event()
    failures: list[BaseException] = []
    looks = [0] * 4

    def churn() -> None:  # loads (which evict at the cap), unloads and uses, 2,000 times
        try:
            for step in range(2000):
                model_id = "abcd"[step % 4]
                try:
                    with manager.use(model_id, wait=0):
                        pass
                    if step % 3 == 0:
                        manager.unload("abcd"[(step + 1) % 4])
                except (ResourceNotAvailableError, ModelInUseError):
                    pass  # a full cap while another loads: not what this test is about
        finally:
            churned.set()

    def look(index: int) -> None:
        while not churned.is_set():
            try:
                assert len(manager.status()) == 5
                assert manager.devices()
                manager.plan(["a", "b"])
                looks[index] += 1
            except BaseException as error:  # noqa: BLE001 - handed to the assertion below
                failures.append(error)
                return

    workers = [threading.Thread(target=churn), *(threading.Thread(target=look, args=(i,)) for i in range(4))]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    release.set()
    gated.join(10)
    assert not any(worker.is_alive() for worker in workers), "a view blocked"
    assert failures == [] and all(looks)
    assert manager.row("gated").state == "loaded"


class OneAtATime(FakeBackend):
    """Like llama.cpp: one request at a time per loaded model. Streams wait at a gate to overlap on purpose."""

    serial = True

    def __init__(self, devices):
        super().__init__(devices)
        self.running = 0
        self.most_at_once = 0
        self.started = threading.Event()
        self.go_on = threading.Event()

    def stream(self, loaded, prompt, params, *, model_id, raw, stop):
        with self.lock:
            self.running += 1
            self.most_at_once = max(self.most_at_once, self.running)
        try:
            self.started.set()
            assert self.go_on.wait(30)
            result = yield from super().stream(loaded, prompt, params, model_id=model_id, raw=raw, stop=stop)
            return result
        finally:
            with self.lock:
                self.running -= 1


@pytest.fixture
def serial(devices, clock):
    backend = OneAtATime(devices)
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda n: backend,
                         clock=clock)
    fake(manager, "g")
    yield manager, backend
    backend.go_on.set()
    manager.close()


def test_requests_to_a_one_at_a_time_model_run_one_after_another_and_all_complete(serial):
    manager, backend = serial
    told = []
    manager.subscribe(lambda e: told.append(e) if e.kind == "waiting" else None)
    with ThreadPoolExecutor(3) as pool:
        first = pool.submit(manager.generate, "g", "first answer", wait=30)
        assert backend.started.wait(10)
        later = [pool.submit(manager.generate, "g", f"answer {n}", wait=30) for n in (2, 3)]
        deadline = time.monotonic() + 10
        while len({e.position for e in told}) < 2:  # both queued, told their place
            assert time.monotonic() < deadline, told
            time.sleep(0.005)
        backend.go_on.set()
        texts = [first.result(30).text] + [f.result(30).text for f in later]
    assert texts == ["first answer", "answer 2", "answer 3"] and backend.most_at_once == 1
    assert {e.position for e in told} == {1, 2} and all("answers one at a time" in e.message for e in told)


def test_three_agenerate_at_once_on_a_one_at_a_time_model_all_complete(serial):
    manager, backend = serial
    backend.go_on.set()

    async def three():
        return await asyncio.gather(*(manager.agenerate("g", f"hello {n}") for n in range(3)))

    assert [r.text for r in asyncio.run(three())] == ["hello 0", "hello 1", "hello 2"]
    assert backend.most_at_once == 1


def test_a_queued_request_gives_up_at_its_deadline_and_a_second_stream_in_one_thread_fails_at_once(serial):
    manager, backend = serial
    backend.go_on.set()
    pieces = iter(manager.stream("g", "a long answer"))
    first = next(pieces)  # this thread has the model's turn until the stream ends
    with ThreadPoolExecutor(1) as pool:
        impatient = pool.submit(manager.generate, "g", "impatient", wait=0)
        with pytest.raises(ResourceNotAvailableError, match="answers one request at a time and 1 request is ahead"):
            impatient.result(10)
    with pytest.raises(GenerationError, match="this thread has one running on it already"):
        manager.generate("g", "meanwhile, in the same thread")  # it would wait for itself
    assert first + "".join(pieces) == "a long answer"
    assert manager.generate("g", "now").text == "now"  # the stream ended: the turn is free


def test_a_change_wakes_only_the_queued_request_it_can_serve(make_manager, monkeypatch):
    from jupyter_llm_manager.manager import state as state_module

    manager = make_manager(max_loaded_models=1)
    for model_id in ["held", *(f"w{n}" for n in range(10))]:
        fake(manager, model_id)
    holder, let_go = lease_elsewhere(manager, "held")
    waits = [0]
    real_wait = state_module.wait_for

    def counted(condition, deadline):
        waits[0] += 1
        real_wait(condition, deadline)

    monkeypatch.setattr(state_module, "wait_for", counted)
    with ThreadPoolExecutor(10) as pool:
        requests = [pool.submit(manager.load, f"w{n}", wait=60) for n in range(10)]
        deadline = time.monotonic() + 10
        while sum(row.state == "waiting" for row in manager.status()) < 10:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        settled = waits[0]
        for seconds in range(1, 21):  # twenty changes that free no room
            manager.configure(keep_alive=f"{seconds}h")
        woken = waits[0] - settled
        let_go.set()
        holder.join(10)
        for request in requests:
            request.result(30)
    assert woken <= 2 * 20, f"{woken} wake-ups for 20 changes and 10 waiters"  # each change: the next planner
