"""Admission: requests wait for room in a fair queue, fail at once when waiting cannot help, priorities protect.

Fake backend and devices; every wait in these tests waits on a condition (an
event, a thread's end), never on a fixed sleep.
"""

from __future__ import annotations

import _thread
import gc
import math
import threading
import time
import weakref
from concurrent.futures import ThreadPoolExecutor

import pytest
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, FakeBackend, fake, lease_elsewhere

from jupyter_llm_manager import (
    ConfigurationError,
    LLMManager,
    LLMManagerError,
    ManagerClosedError,
    ModelNotFoundError,
    ResourceNotAvailableError,
)
from jupyter_llm_manager.backends import LoadedModel


class Background:
    """A call in another thread; ``result()`` joins it and returns or raises what it did."""

    def __init__(self, call, *args, **kwargs):
        self.outcome = {}
        self.thread = threading.Thread(target=self._run, args=(call, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, call, args, kwargs):
        try:
            self.outcome["value"] = call(*args, **kwargs)
        except BaseException as error:  # noqa: BLE001 - handed to the test by result()
            self.outcome["error"] = error

    def result(self, timeout=10):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "the call did not return"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome["value"]


def waiting(manager, model_id):
    """A request for ``model_id`` waits: queued behind another model, or, when next, told why by its plan."""
    row = manager.row(model_id)
    return row.state == "waiting" and (row.queue_position != 1 or row.waiting_for not in (None, "queued"))


class Holder:
    """A thread that holds a lease on a model until released."""

    def __init__(self, manager, model_id):
        self.entered, self.release = threading.Event(), threading.Event()
        self.call = Background(self._hold, manager, model_id)
        assert self.entered.wait(10)

    def _hold(self, manager, model_id):
        with manager.use(model_id):
            self.entered.set()
            assert self.release.wait(30)

    def done(self):
        self.release.set()
        self.call.result()


# -- the queue ------------------------------------------------------------------------------------

def test_a_request_at_capacity_waits_and_is_served_when_a_lease_ends(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    holder = Holder(manager, "a")
    request = Background(manager.generate, "b", "one two", wait=30)
    assert until(lambda: any(e.kind == "waiting" for e in manager.events()))  # planned, told to wait
    row = manager.row("b")
    assert "a in use" in row.waiting_for and row.queue_position == 1
    (event,) = [e for e in manager.events() if e.kind == "waiting"]
    assert event.model_id == "b" and event.position == 1 and "waiting for capacity: a in use" in event.message
    holder.done()
    assert request.result().text == "one two"
    assert {r.id: r.state for r in manager.status()} == {"a": "registered", "b": "loaded"}


def test_models_are_placed_in_the_order_of_their_earliest_waiter_and_one_load_serves_a_group(make_manager,
                                                                                            backend):
    manager = make_manager(max_loaded_models=1)
    for model_id in "abc":
        fake(manager, model_id)
    holder = Holder(manager, "a")
    first_b = Background(manager.load, "b", wait=30)
    assert until(lambda: waiting(manager, "b"))
    c = Background(manager.load, "c", wait=30)
    assert until(lambda: waiting(manager, "c") and manager.row("c").queue_position == 2)
    second_b = Background(manager.load, "b", wait=30)  # joins b's group, ahead of c
    assert until(lambda: sum(e.kind == "waiting" and e.model_id == "b" for e in manager.events()) >= 2)
    assert manager.row("b").queue_position == 1
    holder.done()
    for call in (first_b, second_b, c):
        call.result()
    assert backend.loads == ["a", "b", "c"]  # b once, for both of its waiters, then c
    loading = [e for e in manager.events() if e.kind == "loading"]
    assert [e.model_id for e in loading] == ["a", "b", "c"]
    assert loading[1].arrival < loading[2].arrival


def test_the_wait_ends_with_an_error_after_the_timeout_not_before_naming_the_holders(make_manager, clock):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    holder = Holder(manager, "a")
    try:
        request = Background(manager.load, "b", wait=30)
        assert until(lambda: waiting(manager, "b"))
        clock.advance(29.9)  # the manager's clock: the waiter looks again, and waits on
        request.thread.join(0.2)
        assert request.thread.is_alive() and waiting(manager, "b")
        clock.advance(0.1)
        with pytest.raises(ResourceNotAvailableError) as caught:
            request.result()
        message = str(caught.value)
        assert "after waiting 30 s" in message and "a in use" in message and "wait=" in message
        assert manager.row("b").state == "registered"  # the queue forgot it
    finally:
        holder.done()


def test_wait_zero_fails_at_once_and_the_setting_is_the_default(make_manager):
    manager = make_manager(max_loaded_models=1, wait_timeout=0)
    fake(manager, "a")
    fake(manager, "b")
    holder = Holder(manager, "a")
    try:  # on the fake clock a wait would never end: an answer at all means it did not wait
        with pytest.raises(ResourceNotAvailableError, match="without waiting"):
            Background(manager.load, "b").result()
    finally:
        holder.done()


def test_waiting_forever_with_inf_and_none_timeouts_are_accepted(make_manager):
    manager = make_manager(max_loaded_models=1, wait_timeout=math.inf)
    assert manager.wait_timeout == math.inf
    manager.wait_timeout = "never"
    assert manager.wait_timeout == math.inf
    fake(manager, "a")
    fake(manager, "b")
    holder = Holder(manager, "a")
    request = Background(manager.load, "b", wait=math.inf)
    assert until(lambda: waiting(manager, "b"))
    holder.done()
    request.result()
    assert manager.row("b").state == "loaded"
    manager.load("a")
    assert manager.unload("a", wait=math.inf) is not None  # no OverflowError from Condition.wait


@pytest.mark.parametrize("bad", [math.nan, float("nan"), "nan", -1, "soon"])
def test_nan_and_negative_waits_are_refused(make_manager, bad):
    manager = make_manager()
    fake(manager, "a")
    with pytest.raises(ConfigurationError):
        manager.load("a", wait=bad)
    with pytest.raises(ConfigurationError):
        manager.unload("a", wait=bad)


@pytest.mark.parametrize("name", ["keep_alive", "wait_timeout"])
def test_nan_durations_are_refused_everywhere(make_manager, name):
    manager = make_manager()
    for bad in (math.nan, "nan", ".nan"):
        with pytest.raises(ConfigurationError):
            manager.configure(**{name: bad})
    with pytest.raises(ConfigurationError):
        fake(manager, "x", keep_alive=math.nan)


def test_a_thread_holding_the_leases_that_block_it_fails_at_once(make_manager):
    manager = make_manager(max_loaded_models=2, wait_timeout=60)
    for model_id in "abc":
        fake(manager, model_id)
    with manager.use("a"), manager.use("b"), pytest.raises(ResourceNotAvailableError) as caught:
        manager.load("c")  # at once: on the fake clock the 60 s wait would never end
    message = str(caught.value)
    assert "this thread" in message and "'a'" in message and "'b'" in message and "max_loaded_models=2" in message


def test_two_threads_each_waiting_for_the_others_lease_do_not_wait_forever(make_manager):
    manager = make_manager(max_loaded_models=2, wait_timeout=60)
    for model_id in "abcd":
        fake(manager, model_id)
    ready, go = threading.Barrier(2), threading.Event()

    def hold_then_ask(held, wanted):
        with manager.use(held):
            ready.wait(10)
            assert go.wait(10)
            return manager.load(wanted)

    first = Background(hold_then_ask, "a", "c")
    second = Background(hold_then_ask, "b", "d")
    assert until(lambda: manager.row("a").in_use and manager.row("b").in_use)
    go.set()
    outcomes = []
    for call in (first, second):  # on the fake clock, two waits for each other would never end
        try:
            call.result(30)
            outcomes.append("ok")
        except ResourceNotAvailableError as error:
            outcomes.append(str(error))
    assert "ok" in outcomes  # one gives up at once (a deadlock), so the other goes on
    assert any("waiting for room, so waiting would never end" in o for o in outcomes if o != "ok")


def test_a_full_queue_answers_at_once(make_manager):
    manager = make_manager(max_loaded_models=1, max_queue=1)
    for model_id in "abc":
        fake(manager, model_id)
    holder = Holder(manager, "a")
    queued = Background(manager.load, "b", wait=30)
    assert until(lambda: waiting(manager, "b"))
    with pytest.raises(ResourceNotAvailableError, match="max_queue=1"):
        manager.load("c", wait=30)
    holder.done()
    queued.result()


def test_ctrl_c_during_a_wait_cancels_only_that_wait(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    holder = Holder(manager, "a")
    timer = threading.Thread(target=lambda: (until(lambda: waiting(manager, "b")), _thread.interrupt_main()))
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        manager.load("b", wait=30)
    timer.join()
    assert manager.row("b").state == "registered" and manager.row("a").in_use == 1
    holder.done()
    manager.load("b")  # the manager goes on as before
    assert manager.row("b").state == "loaded"


def test_a_waiter_whose_model_is_unregistered_meanwhile_is_told_at_once(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    holder = Holder(manager, "a")
    request = Background(manager.load, "b", wait=60)
    assert until(lambda: waiting(manager, "b"))
    manager.unregister("b")
    with pytest.raises(ModelNotFoundError):
        request.result()  # told at once: on the fake clock its 60 s would never pass
    holder.done()


class RemoteFake(FakeBackend):
    """Like a server's model: holds no local memory."""

    remote = True

    def load(self, spec, placement):
        return LoadedModel(model=object(), details={"endpoint": "nowhere"})


def test_remote_models_never_wait_for_room(devices, clock):
    local, remote = FakeBackend(devices), RemoteFake(devices)
    manager = LLMManager(max_loaded_models=1, wait_timeout=0, config_path=False, preload=False, clock=clock,
                         device_probe=devices, backend_factory=lambda name: remote if name == "remote" else local)
    try:
        fake(manager, "a")
        manager.register("far", "fake/far", backend="remote")
        manager.register("farther", "fake/farther", backend="remote")
        with manager.use("a"):
            manager.load("far")
            manager.load("farther")
        assert {r.state for r in manager.status()} == {"loaded"}
    finally:
        manager.close()


# -- priorities and protection (tiers by kind) -----------------------------------------------------

def test_a_protected_model_survives_a_lower_priority_request_which_waits_and_names_it(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "ears", kind="asr")
    fake(manager, "chat", kind="llm")
    manager.load("ears")
    with pytest.raises(ResourceNotAvailableError) as caught:
        manager.load("chat", wait=0)
    assert "ears protected" in str(caught.value) and manager.row("ears").state == "loaded"
    row = manager.row("ears")
    assert (row.priority, row.protected, row.kind) == (2, True, "asr")


def test_a_protected_model_is_replaced_by_an_equal_or_higher_priority_request(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "ears", kind="asr")
    fake(manager, "other-ears", kind="asr")
    fake(manager, "boss", priority=5)
    manager.load("ears")
    manager.load("other-ears")
    assert manager.row("ears").state == "registered"
    manager.load("boss")
    assert manager.row("other-ears").state == "registered" and manager.row("boss").state == "loaded"


def test_a_waiting_lower_priority_request_is_served_when_the_protected_model_goes(make_manager):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "ears", kind="asr")
    fake(manager, "chat")
    manager.load("ears")
    request = Background(manager.load, "chat", wait=30)
    assert until(lambda: "ears protected" in (manager.row("chat").waiting_for or ""))  # planned: told why it waits
    manager.unload("ears")  # explicit unloads (and keep-alive) still apply to protected models
    request.result()
    assert manager.row("chat").state == "loaded"


def test_tiers_llm_may_evict_tts_but_never_asr_and_unprotected_higher_priority_goes_last(make_manager, clock):
    manager = make_manager(max_loaded_models=3)
    fake(manager, "voice", kind="tts")
    fake(manager, "ears", kind="asr")
    fake(manager, "old-chat")
    fake(manager, "chat")
    for model_id in ("voice", "ears", "old-chat"):
        manager.load(model_id)
        clock.advance(1)
    manager.load("chat")  # evicts the lowest priority first: old-chat, though voice was used before it
    assert manager.row("old-chat").state == "registered"
    manager.max_loaded_models = 2  # lowered: chat (0) goes before voice (1), ears stays
    assert manager.row("chat").state == "registered" and manager.row("voice").state == "loaded"
    manager.load("chat")  # llm (0) may evict tts (1), unprotected, but never asr (2, protected)
    assert manager.row("voice").state == "registered" and manager.row("ears").state == "loaded"
    evicted = [e.model_id for e in manager.events() if e.kind == "evicted"]
    assert evicted == ["old-chat", "chat", "voice"]


def test_after_a_lowered_limit_protected_models_go_last(make_manager, clock):
    manager = make_manager()
    fake(manager, "ears", kind="asr")
    fake(manager, "chat", priority=3)
    manager.load("ears")
    clock.advance(1)
    manager.load("chat")
    manager.max_loaded_models = 1
    assert manager.row("ears").state == "loaded" and manager.row("chat").state == "registered"


def test_explicit_priority_and_protected_win_over_the_kind(make_manager):
    manager = make_manager()
    spec = fake(manager, "ears", kind="asr", priority=0, protected=False)
    assert (spec.effective_priority, spec.effective_protected) == (0, False)
    assert manager.row("ears").priority == 0 and not manager.row("ears").protected


# -- keep-alive on the monotonic clock ---------------------------------------------------------------

def test_a_wall_clock_jump_neither_expires_nor_stretches_a_keep_alive(devices, backend, monkeypatch):
    manager = LLMManager(keep_alive="30m", config_path=False, preload=False, device_probe=devices,
                         backend_factory=lambda name: backend)
    try:
        fake(manager, "a")
        manager.load("a")
        real_time = time.time
        monkeypatch.setattr(time, "time", lambda: real_time() + 3600)  # the clock steps forward an hour
        assert manager.expire_idle() == [] and manager.row("a").state == "loaded"
        assert 1790 < manager.row("a").expires_in <= 1800
        monkeypatch.setattr(time, "time", lambda: real_time() - 7200)  # and two hours back
        assert manager.row("a").expires_in_str().startswith(("29m", "30m"))
    finally:
        manager.close()


# -- subscribers may call back in, from any thread -----------------------------------------------

def test_subscribers_may_reenter_the_manager_on_every_event_kind(make_manager, backend):
    manager = make_manager(max_loaded_models=1)
    for model_id in ("a", "b", "side"):
        fake(manager, model_id)
    seen = []

    def reenter(event):
        seen.append(event.kind)
        manager.status()
        manager.devices()
        manager.row("side")
        if event.kind in ("evicted", "unloaded") and event.model_id != "side":
            manager.load("side")  # loads (and so evicts) from inside a callback
        if event.kind == "loaded" and event.model_id == "side":
            manager.unload("side")

    manager.subscribe(reenter)
    call = Background(lambda: [manager.load("a"), manager.generate("a", "x"), manager.load("b"),
                               manager.unload("b"), manager.pin("a"), manager.unpin("a"),
                               manager.configure(keep_alive="1h"), manager.alias("al", "a")])
    call.result(30)
    assert {"loading", "loaded", "evicted", "unloaded", "generation_started", "generation_finished",
            "pinned", "unpinned", "settings_changed", "registered"} <= set(seen)


def test_a_callback_that_asks_for_the_model_it_is_told_is_loading_gets_an_error(make_manager):
    manager = make_manager()
    fake(manager, "a")
    errors = []

    def on_event(event):
        if event.kind == "loading":
            try:
                manager.load("a")
            except LLMManagerError as error:
                errors.append(str(error))

    manager.subscribe(on_event)
    Background(manager.load, "a").result()
    assert errors and "being loaded by this very thread" in errors[0]


def test_a_callback_in_the_reaper_thread_may_load_and_unload(devices, backend):
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda n: backend)
    try:
        fake(manager, "brief", keep_alive=0.05)
        fake(manager, "other")
        done = threading.Event()

        def on_event(event):
            if event.kind == "evicted" and event.reason == "keep_alive":
                manager.load("other")
                manager.unload("other")
                done.set()

        manager.subscribe(on_event)
        manager.load("brief")
        assert done.wait(10), "the reaper never expired the model"
        manager.load("brief", wait=5)  # the reaper left nothing locked
    finally:
        manager.close()


# -- the defects the redesign makes impossible ------------------------------------------------------

@pytest.mark.parametrize("change", ["overwrite", "unregister"])
def test_a_model_replaced_while_it_loads_leaves_no_orphan(make_manager, backend, devices, change):
    manager = make_manager()
    fake(manager, "a", size=3 * GB)
    entered, release = backend.gate("a")
    load = Background(manager.load, "a")
    assert entered.wait(10)
    if change == "overwrite":
        fake(manager, "a", size=2 * GB, overwrite=True)
    else:
        manager.unregister("a")
    release.set()
    if change == "overwrite":
        del backend.gates["a"]
        load.result()  # looks again, and loads the new spec
        assert manager.row("a").actual_bytes == 2 * GB
    else:
        with pytest.raises(ModelNotFoundError):
            load.result()
    gc.collect()
    held = {d.device: d.held_bytes for d in manager.devices()}
    assert held["cuda:0"] == devices.used["cuda:0"] == (2 * GB if change == "overwrite" else 0)


def test_the_estimate_cache_is_keyed_by_max_context(make_manager, tiny_models):
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("short", source=str(tiny_models["a"]), max_context=128)
        manager.register("long", source=str(tiny_models["a"]), max_context=100_000)
        short, long = manager.estimate("short"), manager.estimate("long")
        assert manager.row("short").instance == manager.row("long").instance  # one instance, two estimates
        assert long.kv_cache_bytes == short.kv_cache_bytes * 100_000 // 128
        assert (short.model_id, long.model_id) == ("short", "long")
    finally:
        manager.close()


def test_a_forgotten_manager_with_keep_alive_frees_its_models(devices, backend):
    manager = LLMManager(keep_alive="10m", config_path=False, preload=False, device_probe=devices,
                         backend_factory=lambda n: backend)
    fake(manager, "a")
    manager.load("a")
    with manager.use("a") as lease:
        model = weakref.ref(lease.model)
    reaper = [t for t in threading.enumerate() if t.name == "llm-manager-keep-alive"]
    assert reaper
    del manager, lease
    assert until(lambda: gc.collect() is not None and model() is None)  # its threads hold it only for a moment
    reaper[-1].join(10)
    assert not reaper[-1].is_alive()


def test_a_closed_manager_refuses_work(make_manager):
    manager = make_manager(keep_alive="1h")
    fake(manager, "a")
    manager.load("a")
    manager.close()
    assert manager.row("a").state == "registered"
    for call in (lambda: manager.load("a"), lambda: manager.generate("a", "x"), lambda: manager.use("a").__enter__()):
        with pytest.raises(ManagerClosedError, match="closed"):
            call()


def test_close_waits_for_a_lease_held_elsewhere_then_frees_its_model(make_manager):
    manager = make_manager()
    fake(manager, "a")
    holder, let_go = lease_elsewhere(manager, "a")
    threading.Timer(0.3, let_go.set).start()  # the holder finishes while close() waits for it
    Background(manager.close).result()  # on the fake clock close()'s 5 s never pass: the lease's end ends it
    holder.join(10)
    assert manager.row("a").state == "registered"  # freed once the lease ended, not left loaded


def test_ctrl_c_while_a_victim_is_freed_keeps_books_and_events_agreeing(make_manager, backend, monkeypatch):
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    manager.load("a")
    original = backend.release_memory

    def interrupted_release(devices):
        original(devices)
        _thread.interrupt_main()  # Ctrl-C lands in the middle of freeing the victim
        time.sleep(0.05)  # give the signal time to arrive while the free is still in progress

    monkeypatch.setattr(backend, "release_memory", interrupted_release)
    with pytest.raises(KeyboardInterrupt):
        manager.load("b")
    monkeypatch.setattr(backend, "release_memory", original)
    kinds = [(e.kind, e.model_id) for e in manager.events()]
    assert ("evicted", "a") in kinds and manager.row("a").state == "registered"
    assert manager.row("b").state in ("registered", "loaded")
    manager.load("b")  # and the manager is usable
    assert {d.device: d.held_bytes for d in manager.devices()}["cuda:0"] == GB


# -- several notebook sessions sharing one manager -------------------------------------------

def test_eight_threads_over_three_models_all_complete_under_cap_two(make_manager, backend):
    manager = make_manager(max_loaded_models=2, wait_timeout=120)
    for model_id in ("m0", "m1", "m2"):
        fake(manager, model_id)
    loaded, peak, lock = set(), [0], threading.Lock()

    def count(event):
        with lock:
            if event.kind == "loading":
                loaded.add(event.model_id)
            elif event.kind in ("evicted", "unloaded", "load_failed"):
                loaded.discard(event.model_id)
            peak[0] = max(peak[0], len(loaded))

    manager.subscribe(count)

    def session(index):
        for turn in range(3):
            model_id = f"m{(index + turn) % 3}"
            with manager.use(model_id):  # a notebook cell holding the model a moment
                manager.status()
            assert manager.generate(model_id, f"hello from {index}", wait=120).text == f"hello from {index}"

    with ThreadPoolExecutor(8) as pool:
        for future in [pool.submit(session, i) for i in range(8)]:
            future.result(120)
    assert peak[0] <= 2
    arrivals = [e.arrival for e in manager.events(None) if e.kind == "loading" and e.arrival is not None]
    assert arrivals == sorted(arrivals)  # placed in the order of their earliest waiter


def test_no_event_is_delivered_while_a_manager_lock_is_held(make_manager, backend):
    """Checked from another thread: while each subscriber call runs, the state must be free to others."""
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    fake(manager, "b")
    fake(manager, "bad", options={"fail": "error"})
    blocked = []

    def check(event):
        other = threading.Thread(target=manager.status)
        other.start()
        other.join(5)
        if other.is_alive():
            blocked.append(event.kind)
            other.join()

    manager.subscribe(check)
    holder = Holder(manager, "a")
    waiter = Background(manager.load, "b", wait=30)
    assert until(lambda: waiting(manager, "b"))
    holder.done()
    waiter.result()
    manager.generate("b", "x")
    with pytest.raises(LLMManagerError):
        manager.load("bad")
    manager.pin("b")
    manager.unpin("b")
    manager.configure(keep_alive=0)
    manager.expire_idle()
    manager.unregister("a")
    kinds = {e.kind for e in manager.events(None)}
    assert {"waiting", "loading", "loaded", "evicted", "load_failed", "generation_finished", "pinned",
            "settings_changed", "unregistered"} <= kinds
    assert blocked == []
