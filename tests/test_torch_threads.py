"""torch's threads for a generation on the CPU: chosen from the idle cores, on the thread that generates.

The choice itself is llama.cpp's (tests/test_llama_threads.py); here: where torch's count is set, that it
is put back, that overlapping generations share one count, and that a count the user set is kept.
"""

from __future__ import annotations

import threading

import pytest

from jupyter_llm_manager.backends.transformers import threads as torch_threads
from jupyter_llm_manager.backends.transformers.threads import TorchThreads


class FakeTorch:
    """torch's thread counts as torch keeps them: per thread once set, new threads start from the last set."""

    def __init__(self, default: int) -> None:
        self.latest = default
        self.counts = threading.local()

    def get_num_threads(self) -> int:
        if not hasattr(self.counts, "value"):
            self.counts.value = self.latest
        return self.counts.value

    def set_num_threads(self, count: int) -> None:
        self.counts.value = self.latest = count


class Choice:
    """A thread choice that returns ``count``, counting its calls."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.chosen = 0
        self.finishes = 0

    def choose(self) -> int:
        self.chosen += 1
        return self.count

    def finished(self) -> None:
        self.finishes += 1


def threads_with(choice: Choice, environ: dict | None = None, default: int = 4) -> TorchThreads:
    return TorchThreads(lambda: choice, environ={} if environ is None else environ, default=lambda: default)


def test_a_generation_runs_on_the_chosen_count_and_puts_torch_s_back_after():
    torch, choice = FakeTorch(4), Choice(1)
    chooser = threads_with(choice)
    chooser.note(torch, fresh=True)
    with chooser.computing(torch) as count:
        assert count == 1 and torch.get_num_threads() == 1
    assert torch.get_num_threads() == 4 and choice.finishes == 1
    seen = []
    worker = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    worker.start()
    worker.join()
    assert seen == [4]  # a thread started afterwards starts from torch's own count again


def test_the_count_is_set_on_the_worker_thread_that_generates():
    torch, choice = FakeTorch(4), Choice(2)
    chooser = threads_with(choice)
    chooser.note(torch, fresh=True)
    seen = []

    def generate() -> None:
        with chooser.computing(torch):
            seen.append(torch.get_num_threads())
        seen.append(torch.get_num_threads())

    worker = threading.Thread(target=generate)
    worker.start()
    worker.join()
    assert seen == [2, 4]


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_a_count_from_the_environment_is_the_users(variable):
    torch, choice = FakeTorch(3), Choice(1)
    chooser = threads_with(choice, environ={variable: "3"})
    chooser.note(torch, fresh=True)
    with chooser.computing(torch) as count:
        assert count is None and torch.get_num_threads() == 3
    assert choice.chosen == 0


def test_a_set_num_threads_call_after_torch_was_first_seen_is_the_users():
    torch, choice = FakeTorch(4), Choice(1)
    chooser = threads_with(choice)
    chooser.note(torch, fresh=True)
    torch.set_num_threads(3)  # the user's
    with chooser.computing(torch) as count:
        assert count is None and torch.get_num_threads() == 3
    assert torch.get_num_threads() == 3 and choice.chosen == 0
    torch.set_num_threads(4)  # back to torch's own: chosen again
    with chooser.computing(torch) as count:
        assert count == 1


def test_torch_imported_earlier_by_someone_else_keeps_a_count_other_than_its_default():
    torch, choice = FakeTorch(4), Choice(1)
    torch.set_num_threads(2)  # set before this package ever saw torch
    chooser = threads_with(choice, default=4)
    chooser.note(torch, fresh=False)
    with chooser.computing(torch) as count:
        assert count is None and torch.get_num_threads() == 2
    other = threads_with(Choice(1), default=4)
    other.note(FakeTorch(4), fresh=False)  # torch's default: nobody set it
    with other.computing(FakeTorch(4)) as count:
        assert count == 1


def test_overlapping_generations_share_one_choice_until_the_last_ends():
    torch, choice = FakeTorch(4), Choice(1)
    chooser = threads_with(choice)
    chooser.note(torch, fresh=True)
    inside, leave = threading.Barrier(3), threading.Event()
    seen = []

    def generate() -> None:
        with chooser.computing(torch) as count:
            seen.append((count, torch.get_num_threads()))
            inside.wait(10)
            leave.wait(10)

    workers = [threading.Thread(target=generate) for _ in range(2)]
    for worker in workers:
        worker.start()
    inside.wait(10)
    choice.count = 3  # a later choice would say otherwise: the running ones share the first
    assert choice.chosen == 1 and choice.finishes == 0
    leave.set()
    for worker in workers:
        worker.join(10)
    assert seen == [(1, 1), (1, 1)] and choice.finishes == 1
    assert torch.get_num_threads() == 4


@pytest.fixture
def chosen_count(monkeypatch):
    """The process's torch thread choice, made to pick one thread (torch's default here is more, or the same)."""
    choice = Choice(1)
    monkeypatch.setattr(torch_threads.TORCH_THREADS, "_choice", choice)
    return choice


def _counts_while_generating(manager, how: str) -> list[int]:
    """torch's thread count on the thread that computes each token, read by a logits processor."""
    import torch

    seen: list[int] = []

    def record(input_ids, scores):
        seen.append(torch.get_num_threads())
        return scores

    options = {"max_new_tokens": 3, "min_new_tokens": 3, "logits_processor": [record]}
    if how == "stream":
        "".join(manager.stream("a", "Hello", **options))
    else:
        manager.generate("a", "Hello", **options)
    return seen


@pytest.mark.parametrize("how", ["generate", "stream"])
def test_a_generation_on_the_cpu_computes_with_the_chosen_count_on_its_own_thread(real_manager, chosen_count, how):
    import torch

    real_manager.load("a")
    before = torch.get_num_threads()
    if torch_threads.TORCH_THREADS.users_count(torch):
        pytest.skip("this process runs with a thread count set by its environment")
    assert _counts_while_generating(real_manager, how) == [1, 1, 1]
    assert torch.get_num_threads() == before and chosen_count.finishes >= 1


@pytest.mark.parametrize("how", ["generate", "stream"])
def test_a_count_the_user_set_is_kept_while_generating(real_manager, chosen_count, how):
    import torch

    real_manager.load("a")
    before = torch.get_num_threads()
    mine = before + 1
    torch.set_num_threads(mine)
    try:
        assert _counts_while_generating(real_manager, how) == [mine] * 3
        assert torch.get_num_threads() == mine
    finally:
        torch.set_num_threads(before)
    assert chosen_count.chosen == 0


def test_a_model_on_the_cpu_keeps_the_cpu_sampler_looking_until_it_is_unloaded(tiny_models):
    from jupyter_llm_manager import LLMManager
    from jupyter_llm_manager.support.cpus import SAMPLER

    before = SAMPLER.holders
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    try:
        manager.register("a", source=str(tiny_models["a"]))
        manager.load("a")
        assert SAMPLER.holders == before + 1 and SAMPLER.running
        manager.unload("a")
        assert SAMPLER.holders == before
    finally:
        manager.close()
