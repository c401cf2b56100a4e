"""How many threads llama.cpp (and torch) run: the physical cores this process may use, no more than the CPUs idle.

llama.cpp's threads wait for one another at every step, so one thread on a core that other work holds
stalls them all; the thread count of each request follows what the CPUs did while the model was idle, or
the background sampler's recent looks — never a look taken while the request waits.
"""

from __future__ import annotations

import threading

import pytest
from jlm_helpers.conditions import until

from jupyter_llm_manager.backends.llama_cpp import options as llama_cpp_options
from jupyter_llm_manager.backends.llama_cpp.options import ThreadChoice, core_budget, cpu_snapshot, idle_cpus
from jupyter_llm_manager.support import cpus as cpus_module
from jupyter_llm_manager.support.cpus import CpuSampler


class Cpus:
    """Scripted CPUs: ``at(t, busy)`` sets what the next reads return; ``reads`` counts every read."""

    def __init__(self, count: int) -> None:
        self.now = (0.0, (0.0,) * count)
        self.own = 0.0  # this process's CPU seconds so far
        self.reads = 0

    def at(self, seconds: float, busy: tuple[float, ...], own: float = 0.0) -> None:
        self.now, self.own = (seconds, busy), own

    def __call__(self):
        self.reads += 1
        return self.now

    def own_seconds(self) -> float:
        return self.own


def choice(cores: int, cpus: Cpus) -> tuple[ThreadChoice, CpuSampler]:
    sampler = CpuSampler(snapshot=cpus, own=cpus.own_seconds, period=None)  # no thread: looks taken by the test
    return ThreadChoice(cores, snapshot=cpus, sampler=sampler), sampler


def test_a_busy_cpu_takes_its_thread_away_read_from_the_samplers_looks_without_waiting():
    cpus = Cpus(2)
    chooser, sampler = choice(2, cpus)
    sampler.sample()  # the background look, a third of a second before the request
    cpus.at(0.3, (0.3, 0.0))  # the first CPU busy all along
    cpus.reads = 0
    assert chooser.choose() == 1
    assert cpus.reads == 1  # one look now, none after a wait: the earlier look is the sampler's


def test_the_first_choice_without_any_look_takes_the_budget_at_once():
    cpus = Cpus(4)
    chooser, sampler = choice(4, cpus)
    sampler.sample()  # the look the load's hold takes: no time has passed since
    cpus.reads = 0
    assert chooser.choose() == 4 and cpus.reads == 1  # no reading yet: the whole budget, without waiting


def test_the_first_request_after_a_load_reads_the_cpus_over_the_load_leaving_out_this_process_own_work():
    cpus = Cpus(2)
    chooser, sampler = choice(2, cpus)
    sampler.sample()  # the load starts
    assert chooser.choose() == 2
    cpus.at(0.10, (0.09, 0.0), own=0.09)  # the load kept the first CPU busy: this process's own work
    chooser.finished()
    cpus.at(0.11, (0.10, 0.0), own=0.10)  # the request comes at once (no idle time to read)
    assert chooser.choose() == 2
    cpus.at(0.5, (0.49, 0.0), own=0.10)  # the next one comes after the first CPU was busy with other work
    chooser.finished()
    cpus.at(0.9, (0.89, 0.0), own=0.10)
    assert chooser.choose() == 1


@pytest.mark.parametrize("busy, threads", [
    ((0.0, 0.0, 0.0, 0.0), 4),  # all idle
    ((1.0, 1.0, 1.0, 1.0), 1),  # all busy: still one thread
    ((0.5, 0.5, 0.0, 0.0), 3),
    ((0.3, 0.0, 0.0, 0.0), 3),  # less than three quarters of a CPU idle does not count as one
    ((0.2, 0.0, 0.0, 0.0), 4),
])
def test_the_cpus_read_while_the_model_was_idle_decide_the_next_request(busy, threads):
    cpus = Cpus(4)
    chooser, _ = choice(4, cpus)
    cpus.at(10.0, (0.0,) * 4)
    chooser.finished()  # the last request ended at 10 s; the next starts at 11 s
    cpus.at(11.0, busy)
    cpus.reads = 0
    assert chooser.choose() == threads and cpus.reads == 1


def test_never_more_than_the_physical_cores_and_back_to_back_requests_keep_the_last_count():
    cpus = Cpus(8)
    chooser, _ = choice(2, cpus)
    chooser.finished()
    cpus.at(1.0, (0.0,) * 8)
    assert chooser.choose() == 2  # eight idle CPUs, two physical cores
    chooser.finished()
    cpus.at(1.01, (0.0,) * 8)
    assert chooser.choose() == 2  # 10 ms apart: too short to read, the last count


def test_a_stale_idle_time_gives_way_to_the_samplers_recent_looks():
    cpus = Cpus(2)
    chooser, sampler = choice(2, cpus)
    chooser.finished()  # a minute ago: says nothing about now
    cpus.at(59.6, (0.0, 0.0))
    sampler.sample()
    cpus.at(59.9, (0.15, 0.15))
    sampler.sample()
    cpus.at(60.0, (0.4, 0.4))  # both CPUs busy since the look 0.4 s ago
    cpus.reads = 0
    assert chooser.choose() == 1 and cpus.reads == 1


def test_looks_too_old_or_too_recent_are_no_reading():
    cpus = Cpus(2)
    sampler = CpuSampler(snapshot=cpus, own=cpus.own_seconds, period=None)
    sampler.sample()
    assert sampler.idle((0.01, (0.0, 0.0))) is None  # 10 ms: too short to say anything
    assert sampler.idle((5.0, (0.0, 0.0))) is None  # 5 s: too old
    assert sampler.idle((0.2, (0.1, 0.0))) == pytest.approx(1.5)


def test_without_cpu_figures_every_core_is_used():
    chooser = ThreadChoice(3, snapshot=lambda: None, sampler=CpuSampler(snapshot=lambda: None, period=None))
    chooser.finished()
    assert chooser.choose() == 3


def test_the_sampler_looks_in_the_background_while_held_and_stops_when_released():
    sampler = CpuSampler(period=0.01)
    named = lambda: [t for t in threading.enumerate() if t.name == "jlm-cpu-sampler" and t.is_alive()]
    first = sampler.hold()
    second = sampler.hold()
    assert sampler.running and named()
    assert until(lambda: sampler.idle(cpu_snapshot() or (0.0, ())) is not None, 5)  # looks taken meanwhile
    first.release()
    first.release()  # a second release of one hold does nothing
    assert sampler.running
    second.release()
    assert until(lambda: not named(), 5)
    third = sampler.hold()  # held again: it starts again
    assert sampler.running
    del third  # a hold that is dropped releases itself
    assert until(lambda: not sampler.running, 5)


def test_the_budget_counts_physical_cores_within_the_cpu_quota(monkeypatch):
    monkeypatch.setattr(cpus_module, "usable_cores", lambda: 4)
    counts = {True: 4, False: 2}  # four logical CPUs, two physical cores
    monkeypatch.setattr(cpus_module.psutil, "cpu_count", lambda logical=True: counts[logical])
    monkeypatch.setattr(cpus_module, "_cpu_quota", lambda: None)
    assert core_budget() == 2
    monkeypatch.setattr(cpus_module, "_cpu_quota", lambda: 1)
    assert core_budget() == 1
    monkeypatch.setattr(cpus_module, "usable_cores", lambda: 1)  # pinned to one CPU of the four
    monkeypatch.setattr(cpus_module, "_cpu_quota", lambda: None)
    assert core_budget() == 1


def test_this_machines_cpus_are_read():
    before = cpu_snapshot()
    if before is None:
        pytest.skip("this system does not report CPU times")
    after = cpu_snapshot()
    assert after is not None and len(after[1]) == len(before[1]) >= 1
    assert 0 <= idle_cpus(before, after) <= len(before[1])
    assert 1 <= core_budget() <= llama_cpp_options.usable_cores()
