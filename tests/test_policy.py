"""The pure parts, tested directly: no manager, threads, models or clock. A snapshot in, a plan out.

Fit (victims, waiting, refusals), restoring limits and keep-alive, placement,
the wait queue, and the whole decision with its simulation.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from jupyter_llm_manager.backends.base import ContextGrowth, Placement
from jupyter_llm_manager.manager.admission.queue import WaitQueue
from jupyter_llm_manager.manager.policy import fit
from jupyter_llm_manager.manager.policy.decision import Ask, decide, fit_hint, simulate
from jupyter_llm_manager.manager.policy.fit import DeviceRoom, Holding, Request, Snapshot
from jupyter_llm_manager.manager.policy.placement import place
from jupyter_llm_manager.reports import MemoryEstimate

GB = 1000**3


def held(name, size=GB, device="cuda:0", *, last_used=0.0, **fields):
    return Holding(name, name, bytes={device: size}, last_used=last_used, **fields)


def room(budget=10 * GB, device="cuda:0"):
    return {device: DeviceRoom(device, budget, 2 * budget)}


def ask(name, size=GB, **fields):
    fields.setdefault("wanted", "cuda:0")
    fields.setdefault("kinds", frozenset({"cpu", "cuda"}))
    return Ask(name, name, MemoryEstimate(name, size, 0, 0, size, "fake", "fake", "fake"), **fields)


def request(name, size=GB, device="cuda:0", **fields):
    return Request(name, name, {device: size}, **fields)


# -- fit: who goes, who waits, who is refused ----------------------------------------------------

def test_the_least_recently_used_goes_first_under_the_count_cap():
    snapshot = Snapshot((held("old", last_used=1), held("new", last_used=2)), room(), max_loaded=2)
    plan = fit.admit(snapshot, request("x"))
    assert plan.admitted and [(e.name, e.reason) for e in plan.evictions] == [("old", "lru")]


def test_lower_priority_goes_before_older_and_a_budget_evicts_only_what_it_needs():
    snapshot = Snapshot((held("old", 3 * GB, last_used=1, priority=1), held("cheap", 3 * GB, last_used=5),
                         held("small", GB, last_used=2)), room(8 * GB))
    plan = fit.admit(snapshot, request("x", 3 * GB))  # 7 GB held of 8: 2 GB must go
    assert [(e.name, e.reason) for e in plan.evictions] == [("small", "budget"), ("cheap", "budget")]


def test_pinned_and_leased_models_are_never_victims():
    snapshot = Snapshot((held("pinned", pinned=True), held("busy", leases=1, lease_threads=frozenset({7}))),
                        room(), max_loaded=2)
    assert fit.admit(snapshot, request("x", thread=1)).verdict == "wait"  # busy's lease will end
    only_pinned = Snapshot((held("pinned", pinned=True),), room(), max_loaded=1)
    refused = fit.admit(only_pinned, request("x"))
    assert refused.verdict == "refuse" and "only pinned models" in refused.reason


def test_a_protected_model_goes_only_for_an_equal_or_higher_priority():
    snapshot = Snapshot((held("ears", priority=2, protected=True),), room(), max_loaded=1)
    assert fit.admit(snapshot, request("chat", priority=0)).verdict == "wait"
    assert [e.name for e in fit.admit(snapshot, request("other", priority=2)).evictions] == ["ears"]


def test_waiting_for_the_own_lease_is_refused_at_once_naming_it():
    snapshot = Snapshot((held("mine", leases=1, lease_threads=frozenset({1})),), room(), max_loaded=1)
    plan = fit.admit(snapshot, request("x", thread=1))
    assert plan.verdict == "refuse" and "this thread holds them" in plan.reason and plan.blockers[0].model_id == "mine"


def test_across_kernels_only_models_in_use_that_keep_a_request_out_alone_are_needed_and_make_a_cycle():
    from jupyter_llm_manager.manager.policy.cycles import WaitingRequest, deadlock, needs_gone, waiting_on

    mine = held("mine", 3 * GB, leases=1, lease_threads=frozenset({1}))
    theirs = held("theirs", 5 * GB, leases=1, owner="B")
    idle = held("idle", 5 * GB, owner="C")
    wanted = request("x", 4 * GB, thread=1)  # 10 GB: with mine and theirs in, 2 GB are free
    assert needs_gone(Snapshot((mine, theirs), room()), wanted) == {("B", "theirs")}
    assert needs_gone(Snapshot((mine, theirs, idle), room(13 * GB)), wanted) == set()  # the idle one may go instead
    assert needs_gone(Snapshot((mine, replace(theirs, leases=0)), room()), wanted) == set()  # idle: evicted

    b_waits = WaitingRequest("B", 7, "y", frozenset({"theirs"}), frozenset({("A", "mine")}), arrival=3)
    c_waits = WaitingRequest("C", 2, "u", frozenset({"other"}), frozenset({("B", "theirs")}))
    assert waiting_on([c_waits, b_waits], "A", {"mine"}) == [b_waits, c_waits]  # through B, C waits too
    assert waiting_on([c_waits], "A", {"mine"}) == []
    snapshot = Snapshot((mine, theirs), room())
    assert deadlock(snapshot, wanted, [b_waits], "A") == (theirs,)
    assert deadlock(snapshot, wanted, [], "A") == ()  # B's model is in use, but B waits for nothing of ours
    assert deadlock(Snapshot((mine, theirs), room(13 * GB)), wanted, [b_waits], "A") == ()  # fits beside it


def test_too_big_even_with_everything_evicted_is_refused_with_the_shortfall():
    plan = fit.admit(Snapshot((held("a"),), room(4 * GB)), request("x", 5 * GB))
    assert plan.verdict == "refuse" and plan.shortfalls[0].needed_bytes == 5 * GB


def test_a_load_in_flight_on_the_device_makes_a_request_wait():
    snapshot = Snapshot((held("loading", state="loading"),), room())
    assert fit.admit(snapshot, request("x")).verdict == "wait"


def test_enforce_restores_a_lowered_cap_protected_ones_last_and_expire_takes_what_is_due():
    snapshot = Snapshot((held("ears", last_used=1, protected=True, priority=2), held("a", last_used=2),
                         held("b", last_used=3)), room(), max_loaded=1, now=100)
    assert [e.name for e in fit.enforce(snapshot).evictions] == ["a", "b"]
    due = Snapshot((held("a", expires_at=50), held("b", expires_at=150), held("c", expires_at=10, leases=1)), now=100)
    assert [e.name for e in fit.expire(due).evictions] == ["a"]


# -- placement ---------------------------------------------------------------------------------

def test_auto_takes_the_gpu_with_the_most_room_else_the_cpu():
    devices = {**room(10 * GB, "cuda:0"), **room(20 * GB, "cuda:1"), **room(64 * GB, "cpu")}
    snapshot = Snapshot((held("big", 15 * GB, "cuda:1", pinned=True),), devices)  # evictions count as room
    assert place("auto", {"cpu", "cuda"}, snapshot, request("x")).devices == ("cuda:0",)
    assert place("auto", {"cpu"}, snapshot, request("x")).devices == ("cpu",)


def test_a_gpu_that_is_not_there_is_refused_at_once():
    with pytest.raises(Exception, match="no GPU|none is usable"):
        place("cuda", {"cpu"}, Snapshot((), room(64 * GB, "cpu")), request("x", device="cpu"))


# -- the wait queue ---------------------------------------------------------------------------

def test_the_queue_places_models_by_their_earliest_waiter_and_lease_holders_first():
    queue = WaitQueue()
    b1 = queue.add("b", "b", 1, holds_leases=False)
    queue.add("c", "c", 2, holds_leases=False)
    queue.add("b", "b", 3, holds_leases=False)
    assert queue.keys() == ["b", "c"] and queue.position("c") == 2 and queue.may_plan(b1)
    holder = queue.add("d", "d", 4, holds_leases=True)  # others may wait for its leases: it goes first
    assert queue.keys()[0] == "d" and queue.may_plan(holder) and not queue.may_plan(b1)
    queue.serve("b")
    assert queue.keys() == ["d", "c"] and len(queue) == 2


# -- the whole decision, and its simulation -------------------------------------------------------

def test_a_model_over_max_memory_per_model_is_refused_before_anything_else():
    decision = decide(Snapshot((), room()), ask("x", 3 * GB, cap=GB))
    assert decision.plan.verdict == "refuse" and "max_memory_per_model" in decision.plan.reason
    assert "max_memory_per_model" in str(decision.error())


def test_an_auto_context_grows_into_the_room_left_after_the_plan():
    def at(tokens):
        return MemoryEstimate("x", GB, tokens * 1000, 0, GB + tokens * 1000, "w", "kv", "o")

    growth = ContextGrowth(512, 256, 8192, at)
    decision = decide(Snapshot((), room(GB + 2_000_000)), ask("x", at(512).total_bytes, growth=growth))
    assert decision.plan.admitted and decision.placement.context == 1792  # the largest step within 2 MB
    assert decision.estimate.total_bytes == at(1792).total_bytes == decision.request.needed["cuda:0"]


def test_simulation_does_not_shield_earlier_models_of_the_plan():
    snapshot = Snapshot((), room(), max_loaded=1)
    simulation = simulate(snapshot, [ask("a"), ask("b")])
    assert [o.plan.verdict for o in simulation.outcomes] == ["admit", "admit"]
    assert not simulation.fits and simulation.evicted_by("a") == "b"
    assert simulate(Snapshot((), room(), max_loaded=2), [ask("a"), ask("b")]).fits


def test_simulation_uses_a_loaded_model_so_it_is_the_last_to_go():
    snapshot = Snapshot((held("a", last_used=1), held("b", last_used=2)), room(), max_loaded=2, now=10)
    simulation = simulate(snapshot, [ask("a"), ask("c")])  # a is used first: b is now the oldest
    assert simulation.fits and simulation.evicted_names() == ["b"]


def test_the_fit_hint_names_the_cpu_only_for_models_elsewhere():
    assert "device='cpu'" not in fit_hint(["cpu"]) and "device='cpu'" in fit_hint(["cuda:0"])
    # 4-bit quantization needs a GPU (bitsandbytes): on a CPU-only machine a GGUF file is what helps
    assert "4bit" not in fit_hint(["cpu"]) and "llama_cpp" in fit_hint(["cpu"]) and "4bit" in fit_hint(["cuda:0"])
    assert Placement(()).devices == ()
