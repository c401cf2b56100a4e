"""Random sequences of manager operations never break its invariants (hypothesis).

Besides the main thread's operations, loads run in background threads that
may wait for room while the main thread holds leases; models have priorities,
kinds (llm/tts/asr) and protection, and every eviction is checked against
the tier rule.
"""

from __future__ import annotations

import contextlib
import threading
from typing import ClassVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from jlm_helpers.fakes import GB, FakeBackend, FakeClock, FakeDevices

from jupyter_llm_manager import LLMManager, ModelInUseError, ModelNotFoundError, ResourceNotAvailableError

IDS = ["m0", "m1", "m2", "m3", "m4", "m5"]
ALIASES = ["x", "y", "z"]
EXPECTED = (ResourceNotAvailableError, ModelInUseError, ModelNotFoundError)


class ManagerMachine(RuleBasedStateMachine):
    @initialize(cap=st.none() | st.integers(1, 3), fraction=st.sampled_from([0.25, 0.5, 0.9]))
    def start(self, cap, fraction):
        self.clock = FakeClock()
        self.devices = FakeDevices({"cpu": 32 * GB, "cuda:0": 24 * GB})
        backend = FakeBackend(self.devices)
        self.manager = LLMManager(cap, fraction, keep_alive="10m", config_path=False, clock=self.clock,
                                  device_probe=self.devices, backend_factory=lambda name: backend,
                                  preload=False, wait_timeout=5)
        self.leases: list = []
        self.registered: set[str] = set()
        self.background: list[threading.Thread] = []
        self.background_errors: list[BaseException] = []

    def teardown(self):
        for lease in self.leases:
            lease.__exit__(None, None, None)
        self.join_background()
        self.manager.close()

    def join_background(self):
        self.clock.advance(3)  # past their 2 s waits, on the manager's clock: those still waiting give up
        for thread in self.background:
            thread.join(30)
            assert not thread.is_alive(), "a waiting request never returned"
        self.background.clear()
        assert self.background_errors == []

    def loaded(self) -> set[str]:
        return {row.id for row in self.manager.status() if row.state == "loaded"}

    def guarded(self, action, *args, **kwargs):
        """Run an action; only documented refusals are allowed, and they must change nothing."""
        protected_before = self.protected()
        with self.time_passes_while_blocked():
            self.tiered(action, *args, **kwargs)
        assert protected_before <= self.loaded() | self.manually_unloaded, "a pinned or leased model was evicted"

    @contextlib.contextmanager
    def time_passes_while_blocked(self):
        """While the main thread waits (e.g. for a protected model to go), let the manager's clock run on.

        Nothing else advances the fake clock while the main thread is blocked, so a wait that only time
        can end (keep-alive, ``wait_timeout``) would never end; each real second it waits, 6 s pass.
        """
        done = threading.Event()

        def nudge():
            while not done.wait(1.0):
                self.clock.advance(6)

        nudger = threading.Thread(target=nudge, daemon=True)
        nudger.start()
        try:
            yield
        finally:
            done.set()
            nudger.join()

    def tiered(self, action, *args, **kwargs):
        """Run an action (documented refusals allowed); a protected model may only make way for a request
        of equal or higher priority."""
        me, victims = threading.get_ident(), []

        def watch(event):
            if threading.get_ident() == me and event.kind == "evicted" and event.reason in ("lru", "budget"):
                victims.append(self.manager.row(event.model_id))

        unsubscribe = self.manager.subscribe(watch)
        try:
            action(*args, **kwargs)
        except EXPECTED:
            pass
        finally:
            unsubscribe()
        if victims and args and isinstance(args[0], str):
            asked = self.manager.row(args[0])
            for victim in victims:
                assert not (victim.protected and victim.priority > asked.priority), (victim, asked)

    def protected(self) -> set[str]:
        rows = self.manager.status()
        return {r.id for r in rows if r.state == "loaded" and (r.pinned or r.in_use)}

    @rule(model_id=st.sampled_from(IDS), size=st.integers(1, 9), device=st.sampled_from(["cuda:0", "cpu"]),
          priority=st.none() | st.integers(0, 2), pinned=st.booleans(), kind=st.sampled_from(["llm", "tts", "asr"]),
          protected=st.none() | st.booleans())
    def register(self, model_id, size, device, priority, pinned, kind, protected):
        if model_id in self.registered:
            return
        self.manager.register(model_id, f"fake/{model_id}", backend="fake", device=device, priority=priority,
                              pinned=pinned, kind=kind, protected=protected, options={"size": size * GB})
        self.registered.add(model_id)

    @precondition(lambda self: self.registered and len(self.background) < 3)
    @rule(data=st.data())
    def load_in_background(self, data):
        """Another notebook session asks for a model; it may wait for the main thread's leases."""
        model_id = data.draw(st.sampled_from(sorted(self.registered)))

        def run():
            try:
                self.tiered(self.manager.load, model_id, wait=2)
            except BaseException as error:  # noqa: BLE001 - reported by join_background
                self.background_errors.append(error)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self.background.append(thread)

    @precondition(lambda self: self.background)
    @rule()
    def background_requests_end(self):
        self.manually_unloaded = set()
        self.join_background()

    @precondition(lambda self: self.registered)
    @rule(alias=st.sampled_from(ALIASES), data=st.data())
    def alias(self, alias, data):
        target = data.draw(st.sampled_from(sorted(self.registered) + ALIASES))
        self.manually_unloaded = set()
        try:
            self.manager.alias(alias, target, overwrite=True)
        except (ModelNotFoundError, ValueError):
            pass  # an alias to an unknown alias, or a cycle: refused

    @precondition(lambda self: self.registered)
    @rule(data=st.data())
    def load(self, data):
        self.manually_unloaded = set()
        self.guarded(self.manager.load, data.draw(st.sampled_from(sorted(self.registered) + ALIASES)))

    @precondition(lambda self: self.registered)
    @rule(data=st.data())
    def generate(self, data):
        self.manually_unloaded = set()
        self.guarded(self.manager.generate, data.draw(st.sampled_from(sorted(self.registered))), "a b c")

    @precondition(lambda self: self.registered and len(self.leases) < 3)
    @rule(data=st.data())
    def lease(self, data):
        self.manually_unloaded = set()
        lease = self.manager.use(data.draw(st.sampled_from(sorted(self.registered))))
        try:
            self.guarded(lease.__enter__)
        finally:
            if lease.held:
                self.leases.append(lease)

    @precondition(lambda self: self.leases)
    @rule(data=st.data())
    def release(self, data):
        self.manually_unloaded = set()
        lease = self.leases.pop(data.draw(st.integers(0, len(self.leases) - 1)))
        lease.__exit__(None, None, None)

    @precondition(lambda self: self.registered)
    @rule(data=st.data())
    def unload(self, data):
        model_id = data.draw(st.sampled_from(sorted(self.registered)))
        self.manually_unloaded = {model_id} | {r.id for r in self.manager.status()
                                              if r.instance == self.manager.row(model_id).instance}
        self.guarded(self.manager.unload, model_id)

    @precondition(lambda self: self.registered)
    @rule(data=st.data(), pin=st.booleans())
    def pin(self, data, pin):
        self.manually_unloaded = set()
        model_id = data.draw(st.sampled_from(sorted(self.registered)))
        (self.manager.pin if pin else self.manager.unpin)(model_id)

    @rule(minutes=st.integers(1, 15))
    def time_passes(self, minutes):
        self.manually_unloaded = set()
        self.clock.advance(minutes * 60)
        self.guarded(self.manager.expire_idle)

    @rule(cap=st.none() | st.integers(1, 3))
    def change_cap(self, cap):
        self.manually_unloaded = set()
        self.guarded(setattr, self.manager, "max_loaded_models", cap)

    # -- invariants -----------------------------------------------------------------

    @invariant()
    def count_cap_holds(self):
        cap = self.manager.max_loaded_models
        instances = {r.instance for r in self.manager.status() if r.state == "loaded"}
        if cap is not None:
            pinned_or_leased = {r.instance for r in self.manager.status()
                                if r.state == "loaded" and (r.pinned or r.in_use)}
            assert len(instances) <= max(cap, len(pinned_or_leased))

    @invariant()
    def bytes_stay_within_budget(self):
        for device in self.manager.devices():
            assert device.held_bytes <= device.budget_bytes, device

    @invariant()
    def aliases_resolve_to_one_instance(self):
        rows = {r.id: r for r in self.manager.status()}
        for alias in ALIASES:
            try:
                target = self.manager.resolve(alias)
            except (ModelNotFoundError, ValueError):
                continue
            assert target in rows and sum(alias in r.aliases for r in rows.values()) == 1

    @invariant()
    def accounting_matches_live_objects(self):
        # fake models have no reference cycles: refcounting frees them as soon as the manager lets go.
        # The keep-alive reaper may be freeing one right now (a background thread): compare only when
        # nothing was unloading or unloaded around the two readings.
        last = self.manager.events(1)
        before = {r.state for r in self.manager.status()}
        held = {d.device: d.held_bytes for d in self.manager.devices()}
        used = dict(self.devices.used)
        after = {r.state for r in self.manager.status()}
        # A load in a background thread reserves its estimate before the backend allocates: compare only
        # when nothing was loading either.
        if {"loading", "unloading"} & (before | after) or self.manager.events(1) != last:
            return
        assert held == used

    manually_unloaded: ClassVar[set[str]] = set()


TestManagerMachine = ManagerMachine.TestCase
TestManagerMachine.settings = settings(max_examples=40, stateful_step_count=35, deadline=None,
                                       suppress_health_check=[HealthCheck.too_slow])
