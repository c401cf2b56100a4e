"""How many threads llama.cpp runs: the physical cores this process may use, no more than the CPUs idle.

llama.cpp's threads wait for one another at every step, so one thread on a core that other work holds
stalls them all; the thread count of each request follows what the CPUs did while the model was idle.
"""

from __future__ import annotations

import pytest

from jupyter_llm_manager.backends.llama_cpp import options as llama_cpp_options
from jupyter_llm_manager.backends.llama_cpp.options import ThreadChoice, core_budget, cpu_snapshot, idle_cpus


class Cpus:
    """Scripted snapshots: each call returns the next (time, busy seconds per CPU); ``waits`` records looks."""

    def __init__(self, *snapshots):
        self.snapshots = list(snapshots)
        self.waits: list[float] = []

    def __call__(self):
        return self.snapshots.pop(0)

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


def choice(cores: int, cpus: Cpus) -> ThreadChoice:
    return ThreadChoice(cores, snapshot=cpus, wait=cpus.wait)


def test_a_busy_cpu_takes_its_thread_away():
    cpus = Cpus((0.0, (0.0, 0.0)), (0.05, (0.05, 0.0)))  # a 50 ms look: the first CPU busy all along
    chooser = choice(2, cpus)
    assert chooser.choose() == 1 and cpus.waits == [ThreadChoice.LOOK_SECONDS]


@pytest.mark.parametrize("busy, threads", [
    ((0.0, 0.0, 0.0, 0.0), 4),  # all idle
    ((1.0, 1.0, 1.0, 1.0), 1),  # all busy: still one thread
    ((0.5, 0.5, 0.0, 0.0), 3),
    ((0.3, 0.0, 0.0, 0.0), 3),  # less than three quarters of a CPU idle does not count as one
    ((0.2, 0.0, 0.0, 0.0), 4),
])
def test_the_cpus_read_while_the_model_was_idle_decide_the_next_request(busy, threads):
    cpus = Cpus((10.0, (0.0,) * 4), (11.0, busy))
    chooser = choice(4, cpus)
    chooser.finished()  # the last request ended at 10 s; the next starts at 11 s
    assert chooser.choose() == threads and cpus.waits == []  # no extra look: the idle second says it


def test_never_more_than_the_physical_cores_and_back_to_back_requests_keep_the_last_count():
    cpus = Cpus((0.0, (0.0,) * 8), (1.0, (0.0,) * 8), (1.01, (0.0,) * 8), (1.02, (0.0,) * 8))
    chooser = choice(2, cpus)
    chooser.finished()
    assert chooser.choose() == 2  # eight idle CPUs, two physical cores
    chooser.finished()
    assert chooser.choose() == 2 and cpus.waits == []  # 10 ms apart: too short to read, the last count


def test_a_stale_idle_time_is_replaced_by_a_fresh_look():
    cpus = Cpus((0.0, (0.0, 0.0)), (60.0, (0.0, 0.0)), (60.05, (0.05, 0.05)))
    chooser = choice(2, cpus)
    chooser.finished()
    assert chooser.choose() == 1 and cpus.waits == [ThreadChoice.LOOK_SECONDS]  # a minute ago says nothing now


def test_without_cpu_figures_every_core_is_used():
    chooser = ThreadChoice(3, snapshot=lambda: None, wait=lambda _: None)
    chooser.finished()
    assert chooser.choose() == 3


def test_the_budget_counts_physical_cores_within_the_cpu_quota(monkeypatch):
    monkeypatch.setattr(llama_cpp_options, "usable_cores", lambda: 4)
    counts = {True: 4, False: 2}  # four logical CPUs, two physical cores
    monkeypatch.setattr(llama_cpp_options.psutil, "cpu_count", lambda logical=True: counts[logical])
    monkeypatch.setattr(llama_cpp_options, "_cpu_quota", lambda: None)
    assert core_budget() == 2
    monkeypatch.setattr(llama_cpp_options, "_cpu_quota", lambda: 1)
    assert core_budget() == 1
    monkeypatch.setattr(llama_cpp_options, "usable_cores", lambda: 1)  # pinned to one CPU of the four
    monkeypatch.setattr(llama_cpp_options, "_cpu_quota", lambda: None)
    assert core_budget() == 1


def test_this_machines_cpus_are_read():
    before = cpu_snapshot()
    if before is None:
        pytest.skip("this system does not report CPU times")
    after = cpu_snapshot()
    assert after is not None and len(after[1]) == len(before[1]) >= 1
    assert 0 <= idle_cpus(before, after) <= len(before[1])
    assert 1 <= core_budget() <= llama_cpp_options.usable_cores()
