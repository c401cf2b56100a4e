"""Manager policy on the fake backend: sharing, LRU, cap, budget, pins, leases, keep-alive."""

from __future__ import annotations

import gc
import threading
import time

import pytest
from jlm_helpers.fakes import GB, fake, lease_elsewhere

from jupyter_llm_manager import (
    ConfigurationError,
    ModelInUseError,
    ModelLoadingError,
    ModelNotFoundError,
    ResourceNotAvailableError,
)


def load_in_order(manager, clock, *model_ids):
    """Load each id a second after the previous one, so LRU order is the argument order."""
    for model_id in model_ids:
        manager.load(model_id)
        clock.advance(1)


def states(manager):
    return {row.id: row.state for row in manager.status()}


def snapshot(manager):
    """Everything observable about the registry, for 'nothing changed' checks."""
    rows = [(r.id, r.state, r.aliases, r.in_use, r.pinned, r.actual_bytes, r.error) for r in manager.status()]
    return rows, {d.device: d.held_bytes for d in manager.devices()}


# -- registry, aliases ----------------------------------------------------------------

def test_register_loads_nothing_and_load_is_lazy(make_manager, backend):
    manager = make_manager()
    fake(manager, "a")
    assert states(manager) == {"a": "registered"} and backend.loads == []
    assert manager.generate("a", "one two three", max_new_tokens=2).text == "one two"
    assert backend.loads == ["a"] and states(manager) == {"a": "loaded"}


def test_aliases_share_one_instance(make_manager, backend):
    manager = make_manager()
    fake(manager, "a")
    manager.alias("chat", "a")
    manager.alias("assistant", "chat")
    manager.load("chat")
    manager.load("assistant")
    manager.load("a")
    assert backend.loads == ["a"]
    (row,) = manager.status()
    assert set(row.aliases) == {"chat", "assistant"} and row.state == "loaded"
    manager.unload("assistant")
    assert states(manager) == {"a": "registered"}
    assert manager.resolve("assistant") == "a"  # aliases stay registered


def test_ids_with_the_same_spec_share_and_different_specs_do_not(make_manager, backend, devices):
    manager = make_manager()
    fake(manager, "one", size=2 * GB, source="fake/w")
    fake(manager, "two", size=2 * GB, source="fake/w")  # same source, backend, device, dtype: same weights
    fake(manager, "half", size=2 * GB, source="fake/w", dtype="float16")
    fake(manager, "cpu", size=2 * GB, source="fake/w", device="cpu")
    for model_id in ("one", "two", "half", "cpu"):
        manager.load(model_id)
    assert backend.loads == ["one", "half", "cpu"]
    instances = {row.id: row.instance for row in manager.status()}
    assert instances["one"] == instances["two"]
    assert len({instances["one"], instances["half"], instances["cpu"]}) == 3


def test_unknown_id_suggests_close_ids(make_manager):
    manager = make_manager()
    fake(manager, "llama-7b")
    fake(manager, "mistral")
    with pytest.raises(ModelNotFoundError) as caught:
        manager.load("llama-7")
    assert caught.value.close_matches == ("llama-7b",)
    assert "Did you mean 'llama-7b'?" in str(caught.value)
    assert isinstance(caught.value, KeyError)


def test_alias_errors_leave_the_registry_unchanged(make_manager):
    manager = make_manager()
    fake(manager, "a")
    manager.alias("x", "a")
    manager.alias("y", "x")
    before = snapshot(manager)
    with pytest.raises(ModelNotFoundError):
        manager.alias("z", "nope")
    with pytest.raises(ConfigurationError, match="alias cycle"):
        manager.alias("x", "y", overwrite=True)
    with pytest.raises(ConfigurationError, match="already points"):
        manager.alias("x", "y")
    with pytest.raises(ConfigurationError, match="is a registered model"):
        manager.alias("a", "x")
    assert snapshot(manager) == before
    assert manager.resolve("y") == "a"


def test_reregistering_needs_overwrite_and_overwrite_unloads_the_old_instance(make_manager, backend):
    manager = make_manager()
    fake(manager, "a", size=GB)
    assert fake(manager, "a", size=GB) == manager.spec("a")  # same spec: a no-op
    manager.load("a")
    before = snapshot(manager)
    with pytest.raises(ConfigurationError, match="overwrite=True"):
        fake(manager, "a", size=2 * GB)
    assert snapshot(manager) == before
    fake(manager, "a", size=2 * GB, overwrite=True)
    assert states(manager) == {"a": "registered"}
    manager.load("a")
    assert manager.status()[0].actual_bytes == 2 * GB


@pytest.mark.parametrize("bad", [0, -1, 1.5, "two", True])
def test_a_zero_or_negative_cap_is_refused(make_manager, bad):
    with pytest.raises(ConfigurationError):
        make_manager(max_loaded_models=bad)
    manager = make_manager(max_loaded_models=2)
    with pytest.raises(ConfigurationError):
        manager.max_loaded_models = bad
    assert manager.max_loaded_models == 2


# -- count cap and LRU ------------------------------------------------------------------

def test_count_cap_evicts_the_least_recently_used(make_manager, clock):
    manager = make_manager(max_loaded_models=2)
    for model_id in "abc":
        fake(manager, model_id)
    load_in_order(manager, clock, "a", "b")
    manager.generate("a", "touch")  # a is now more recent than b
    clock.advance(1)
    manager.load("c")
    assert states(manager) == {"a": "loaded", "b": "registered", "c": "loaded"}
    evicted = [e for e in manager.events() if e.kind == "evicted"]
    assert [(e.model_id, e.reason) for e in evicted] == [("b", "lru")]


def test_lower_priority_goes_first(make_manager, clock):
    manager = make_manager(max_loaded_models=2)
    fake(manager, "important", priority=10)
    fake(manager, "scratch")
    fake(manager, "new")
    load_in_order(manager, clock, "scratch", "important")
    manager.generate("scratch", "recent use")
    clock.advance(1)
    manager.load("new")
    assert states(manager)["scratch"] == "registered"
    assert states(manager)["important"] == "loaded"


def test_lowering_the_cap_evicts_down_to_it(make_manager, clock):
    manager = make_manager()
    for model_id in "abc":
        fake(manager, model_id)
    load_in_order(manager, clock, "a", "b", "c")
    manager.max_loaded_models = 1
    assert states(manager) == {"a": "registered", "b": "registered", "c": "loaded"}


def test_cap_with_everything_pinned_or_leased_is_a_clear_error(make_manager):
    manager = make_manager(max_loaded_models=2)
    for model_id in "abc":
        fake(manager, model_id)
    manager.load("a", pin=True)
    with manager.use("b"):
        before = snapshot(manager)
        with pytest.raises(ResourceNotAvailableError) as caught:
            manager.load("c")
        assert "max_loaded_models=2" in str(caught.value)
        assert "'a'" in str(caught.value) and "pinned" in str(caught.value) and "in use" in str(caught.value)
        assert snapshot(manager) == before


# -- memory budget -----------------------------------------------------------------------

def test_budget_evicts_on_the_device_that_needs_room(make_manager, devices, clock):
    manager = make_manager(memory_fraction=0.5)  # 12 GB of the fake 24 GB GPU
    fake(manager, "gpu1", size=6 * GB)
    fake(manager, "gpu2", size=5 * GB)
    fake(manager, "cpu", size=6 * GB, device="cpu")
    fake(manager, "gpu3", size=4 * GB)
    load_in_order(manager, clock, "gpu1", "cpu", "gpu2")
    manager.load("gpu3")  # 6 + 5 + 4 > 12: gpu1 (least recent on cuda:0) goes, cpu stays
    assert states(manager) == {"gpu1": "registered", "gpu2": "loaded", "cpu": "loaded", "gpu3": "loaded"}
    assert [(e.model_id, e.reason) for e in manager.events() if e.kind == "evicted"] == [("gpu1", "budget")]
    (gpu,) = [d for d in manager.devices() if d.device == "cuda:0"]
    assert gpu.held_bytes == 9 * GB <= gpu.budget_bytes == 12 * GB


def test_budget_never_exceeds_what_the_device_really_has_free(make_manager, devices):
    devices.others["cuda:0"] = 20 * GB  # another kernel holds 20 of the 24 GB
    manager = make_manager(memory_fraction=0.9)
    fake(manager, "big", size=5 * GB)
    with pytest.raises(ResourceNotAvailableError) as caught:
        manager.load("big")
    (shortfall,) = caught.value.shortfalls
    assert shortfall.device == "cuda:0" and shortfall.budget_bytes == 4 * GB
    assert "needs 5.0 GB" in str(caught.value) and "4.0 GB" in str(caught.value)


def test_absolute_budget_per_device(make_manager):
    manager = make_manager(memory_budget={"cuda:0": "3GB"})
    fake(manager, "a", size=2 * GB)
    fake(manager, "b", size=2 * GB)
    manager.load("a")
    manager.load("b")
    assert states(manager) == {"a": "registered", "b": "loaded"}


def test_a_model_that_cannot_fit_changes_nothing_and_names_the_holders(make_manager):
    manager = make_manager(memory_fraction=0.5)
    fake(manager, "pinned", size=5 * GB, pinned=True)
    fake(manager, "leased", size=4 * GB)
    fake(manager, "idle", size=1 * GB)
    fake(manager, "huge", size=8 * GB)
    manager.load("pinned")
    manager.load("idle")
    with manager.use("leased"):
        before = snapshot(manager)
        with pytest.raises(ResourceNotAvailableError) as caught:
            manager.load("huge")
        assert snapshot(manager) == before  # 'idle' was not evicted for nothing
    message = str(caught.value)
    assert "'pinned' 5.0 GB (pinned)" in message and "'leased' 4.0 GB (in use)" in message
    assert "needs 8.0 GB" in message and "quantization" in message
    assert states(manager)["huge"] == "registered"  # a model that did not fit is not "failed"


def test_cuda_requested_without_a_gpu_is_a_clear_error(make_manager, backend):
    backend.kinds = {"cpu"}
    manager = make_manager()
    fake(manager, "a", device="cuda")
    with pytest.raises(ResourceNotAvailableError, match="CUDA GPU but none is usable"):
        manager.load("a")
    fake(manager, "auto", device="auto")
    manager.load("auto")
    assert manager.row("auto").device == "cpu"


def test_auto_placement_prefers_the_gpu_with_most_room(make_manager, devices):
    devices.totals["cuda:1"] = 48 * GB
    devices.used["cuda:1"] = 0
    manager = make_manager()
    fake(manager, "a", device="auto")
    manager.load("a")
    assert manager.row("a").device == "cuda:1"


def test_unknown_estimate_is_settled_after_the_load(make_manager):
    manager = make_manager(memory_budget={"cuda:0": "10GB"})
    fake(manager, "old", size=6 * GB)
    fake(manager, "surprise", size=6 * GB, options={"estimate": 0})
    manager.load("old")
    manager.load("surprise")  # estimated 0, really 6: the budget is restored by evicting 'old'
    assert states(manager) == {"old": "registered", "surprise": "loaded"}


# -- pins, leases -----------------------------------------------------------------------

def test_pinned_models_are_never_evicted_but_can_be_unloaded(make_manager, clock):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    manager.load("a", pin=True)
    with pytest.raises(ResourceNotAvailableError):
        manager.load("b")
    manager.unpin("a")
    manager.load("b")
    assert states(manager) == {"a": "registered", "b": "loaded"}
    manager.pin("b")
    assert manager.unload("b").reason == "manual"


def test_a_leased_model_is_not_evicted_another_victim_is_chosen(make_manager, clock):
    manager = make_manager(max_loaded_models=2)
    for model_id in "abc":
        fake(manager, model_id)
    load_in_order(manager, clock, "a", "b")
    with manager.use("a") as lease:  # a is least recently used, but leased
        assert lease.model.name == "a"
        manager.load("c")
        assert states(manager) == {"a": "loaded", "b": "registered", "c": "loaded"}
    with pytest.raises(Exception, match="not held"):
        _ = lease.model  # the lease forgets the model when the block ends


def test_unload_of_a_leased_model_waits_or_says_it_is_in_use(make_manager):
    manager = make_manager()
    fake(manager, "a")
    with manager.use("a"):
        with pytest.raises(ModelInUseError, match="in use"):
            manager.unload("a")
        with pytest.raises(ModelInUseError):
            manager.unload("a", wait=5)  # this thread holds the lease: no deadlock, an error at once
    worker, done = lease_elsewhere(manager, "a")  # a cell's generation on another thread
    with pytest.raises(ModelInUseError):
        manager.unload("a")  # wait=0: says it is in use
    threading.Timer(0.05, done.set).start()
    report = manager.unload("a", wait=10)  # waits for the lease, then unloads
    worker.join()
    assert report is not None and report.collected and states(manager) == {"a": "registered"}


# -- keep-alive ---------------------------------------------------------------------------

def test_keep_alive_counts_idle_time_not_time_since_load(make_manager, clock):
    manager = make_manager(keep_alive="10m")
    fake(manager, "a")
    manager.load("a")
    clock.advance(9 * 60)
    manager.generate("a", "still here")
    clock.advance(9 * 60)  # 18 min since load, 9 idle
    assert manager.expire_idle() == []
    clock.advance(61)
    (report,) = manager.expire_idle()
    assert report.reason == "keep_alive" and states(manager) == {"a": "registered"}


def test_keep_alive_per_model_pins_and_leases(make_manager, clock):
    manager = make_manager(keep_alive="1h")
    fake(manager, "short", keep_alive="1m")
    fake(manager, "forever", keep_alive="never")
    fake(manager, "pinned", pinned=True)
    fake(manager, "leased")
    for model_id in ("short", "forever", "pinned", "leased"):
        manager.load(model_id)
    with manager.use("leased"):
        clock.advance(2 * 3600)
        expired = {r.model_id for r in manager.expire_idle()}
    assert expired == {"short"}
    assert manager.row("leased").expires_in == 3600  # idle again from the lease's end


def test_the_reaper_thread_unloads_idle_models_and_stops_on_close(make_manager, backend):
    import time

    manager = make_manager(keep_alive=0.2, clock=time.time)
    fake(manager, "a")
    unloaded = threading.Event()
    manager.subscribe(lambda e: unloaded.set() if e.kind == "evicted" and e.reason == "keep_alive" else None)
    manager.load("a")
    assert unloaded.wait(10)
    assert states(manager) == {"a": "registered"}
    manager.close()
    assert not [t for t in threading.enumerate() if t.name == "llm-manager-keep-alive" and t.is_alive()]


# -- failures ------------------------------------------------------------------------------

@pytest.mark.parametrize("mode, error", [("error", ModelLoadingError), ("interrupt", KeyboardInterrupt)])
def test_a_load_that_fails_halfway_leaves_no_trace(make_manager, devices, backend, mode, error):
    manager = make_manager()
    fake(manager, "good")
    fake(manager, "bad", options={"fail": mode})
    manager.load("good")
    with pytest.raises(error):
        manager.load("bad")
    gc.collect()
    assert devices.used["cuda:0"] == GB  # the half-loaded model's memory came back
    if error is KeyboardInterrupt:  # the user stopped it: nothing is wrong with the model
        assert (manager.row("bad").state, manager.row("bad").error) == ("registered", None)
    else:
        assert manager.row("bad").state == "failed" and manager.row("bad").error
    assert [d.held_bytes for d in manager.devices() if d.device == "cuda:0"] == [GB]
    assert manager.generate("good", "still answers").text == "still answers"
    kinds = [e.kind for e in manager.events() if e.model_id == "bad"]
    assert kinds[-2:] == ["loading", "load_failed"]


def test_the_next_load_after_a_failure_can_succeed(make_manager, backend):
    manager = make_manager()
    fake(manager, "flaky", options={"fail": "error"})
    with pytest.raises(ModelLoadingError):
        manager.load("flaky")
    fake(manager, "flaky", overwrite=True)
    manager.load("flaky")
    assert manager.row("flaky").state == "loaded" and manager.row("flaky").error is None


def test_out_of_memory_during_load_evicts_and_retries_once(make_manager, backend, clock):
    manager = make_manager()
    fake(manager, "idle")
    fake(manager, "needs-room", options={"fail": "oom_once"})
    manager.load("idle")
    manager.load("needs-room")
    assert backend.attempts["needs-room"] == 2
    assert states(manager) == {"idle": "registered", "needs-room": "loaded"}


def test_out_of_memory_twice_is_a_resource_error(make_manager, backend, devices):
    manager = make_manager()
    fake(manager, "idle")
    fake(manager, "never-fits", options={"fail": "oom"})
    manager.load("idle")
    with pytest.raises(ResourceNotAvailableError, match="ran out of memory during the load"):
        manager.load("never-fits")
    assert backend.attempts["never-fits"] == 2
    gc.collect()
    assert devices.used["cuda:0"] == 0


# -- status, events ----------------------------------------------------------------------------

def test_status_rows_and_devices_report(make_manager, clock, monkeypatch):
    monkeypatch.setattr(time, "time", lambda: 1_700_000_000.0)
    manager = make_manager(keep_alive="5m")
    fake(manager, "a", size=3 * GB)
    manager.alias("chat", "a")
    manager.load("chat")
    (row,) = manager.status()
    assert (row.id, row.aliases, row.state, row.device, row.actual_bytes) == ("a", ("chat",), "loaded", "cuda:0", 3 * GB)
    assert row.estimated_bytes == 3 * GB and row.actual_str == "3.0 GB"
    assert row.expires_in == 300 and row.expires_in_str() == "5m 00s"
    assert row.expires_at == 1_700_000_000.0 + 300  # shown on the wall clock
    gpu = next(d for d in manager.devices() if d.device == "cuda:0")
    assert gpu.held_bytes == 3 * GB and gpu.models == ("a",) and gpu.total_str == "24.0 GB"


def test_subscribers_get_events_and_can_unsubscribe(make_manager):
    manager = make_manager()
    fake(manager, "a")
    seen = []
    unsubscribe = manager.subscribe(seen.append)
    manager.generate("a", "hi")
    unsubscribe()
    manager.unload("a")
    # started before its lease is taken: no subscriber runs while a lease is held for it
    assert [e.kind for e in seen] == ["generation_started", "loading", "loaded", "generation_finished"]
    assert seen[2].bytes == GB and seen[2].seconds is not None


def test_a_failing_subscriber_does_not_break_the_manager(make_manager):
    manager = make_manager()
    fake(manager, "a")
    manager.subscribe(lambda event: 1 / 0)
    assert manager.generate("a", "fine").text == "fine"


def test_a_subscriber_may_call_the_manager(make_manager):
    manager = make_manager()
    fake(manager, "a")
    rows = []
    manager.subscribe(lambda event: rows.append(len(manager.status())))
    manager.load("a")
    assert rows and all(n == 1 for n in rows)


# -- load options, preload, the singleton ------------------------------------------------------

def test_force_reload_loads_a_fresh_instance(make_manager, backend):
    manager = make_manager()
    fake(manager, "a")
    manager.load("a")
    with manager.use("a") as lease:
        first = lease.model
    handle = manager.load("a", force_reload=True)
    with manager.use("a") as lease:
        assert lease.model is not first
    assert backend.loads == ["a", "a"] and handle.status().state == "loaded"
    assert repr(handle) == "<ModelHandle 'a': loaded>"


def test_preload_models_load_in_the_background_at_start(tmp_path, devices, backend):
    from jupyter_llm_manager import LLMManager

    path = tmp_path / "llm.yaml"
    path.write_text("models:\n"
                    "  eager: {source: fake/eager, backend: fake, preload: true}\n"
                    "  lazy: {source: fake/lazy, backend: fake}\n")
    loaded = threading.Event()
    entered, release = backend.gate("eager")  # hold the background load until we listen
    manager = LLMManager(config_path=path, device_probe=devices, backend_factory=lambda name: backend)
    try:
        assert entered.wait(10)
        manager.subscribe(lambda e: loaded.set() if (e.kind, e.model_id) == ("loaded", "eager") else None)
        release.set()
        assert loaded.wait(10)
        assert states(manager) == {"eager": "loaded", "lazy": "registered"}
    finally:
        manager.close()


def test_get_manager_is_one_kernel_wide_manager_configured_from_the_file(tmp_path, monkeypatch):
    from jupyter_llm_manager import get_manager
    from jupyter_llm_manager.manager import kernel as manager_module

    path = tmp_path / "llm.yaml"
    path.write_text("defaults: {max_loaded_models: 3, default_model: chat}\n"
                    "models:\n  a: {source: org/a}\naliases: {chat: a}\n")
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(path))
    monkeypatch.setattr(manager_module, "_singleton", None)
    first = get_manager()
    try:
        assert get_manager() is first
        assert first.max_loaded_models == 3 and first.default_model == "chat" and first.resolve("chat") == "a"
        assert first.config_path == path
    finally:
        first.close()


def test_built_in_models_are_never_written_to_a_configuration_file(tmp_path, monkeypatch):
    from jupyter_llm_manager import get_manager
    from jupyter_llm_manager.manager import kernel as manager_module
    from jupyter_llm_manager.models.demo import register_demo_models

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(manager_module, "_singleton", None)
    manager = get_manager()
    try:
        assert [row.id for row in manager.status()] == ["smollm2"]
        assert manager.default_model == "smollm2" and manager.config_path is None
        register_demo_models(manager)
        assert (tmp_path / "cache" / "jupyter_llm_manager" / "demo-models" / "demo-large" / "config.json").exists()
        assert manager.generate("demo-small", "Hi", max_new_tokens=3, min_new_tokens=3).completion_tokens == 3
        saved = manager.save(tmp_path / "llm.yaml").read_text()
        assert "demo-" not in saved and "smollm2" not in saved
    finally:
        manager.close()
