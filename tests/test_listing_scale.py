"""Status and ``%llm list`` of many ids: rows of models that did not move are kept, and the cost stays linear.

Timings are compared within one run (the same machine, the same moment), never against a fixed figure:
``benchmarks/bookkeeping.py`` gives the milliseconds.
"""

from __future__ import annotations

import time

import pytest
from IPython.utils.capture import capture_output
from jlm_helpers.benchmarks import benchmark
from jlm_helpers.fakes import fake

from jupyter_llm_manager.frontends.notebook.arguments import LINE_PARSER, parse
from jupyter_llm_manager.frontends.notebook.chats import ChatSessions
from jupyter_llm_manager.frontends.notebook.line_commands import LineCommands
from jupyter_llm_manager.frontends.views import registry


def lister(manager):
    commands = LineCommands(lambda: manager, ChatSessions(), lambda model_id: model_id)

    def listing() -> str:
        with capture_output() as captured:
            commands.run(parse(LINE_PARSER, "list"))
        # printed without a shell; published as a display where an earlier test started one
        return captured.stdout + "".join(output.data.get("text/plain", "") for output in captured.outputs)

    return listing


def test_listing_again_rebuilds_only_the_rows_of_models_that_moved(make_manager, monkeypatch):
    manager = make_manager()
    for index in range(300):
        fake(manager, f"m{index}", device="cpu")
    built: list[str] = []
    cells = registry._cells
    monkeypatch.setattr(registry, "_cells", lambda row, *rest: built.append(row.id) or cells(row, *rest))
    listing = lister(manager)
    first = listing()
    assert len(built) == 300 and "m299" in first
    built.clear()
    assert listing() == first and built == []  # nothing moved: every row's cells are taken again
    manager.load("m7")
    listing()
    assert built == ["m7"]
    built.clear()
    manager.unload("m7")
    manager.load("m8")
    shown = listing()
    assert sorted(built) == ["m7", "m8"] and "m8" in shown
    manager.unregister("m9")
    assert "m9 " not in listing()


def best(call, times: int = 5) -> float:
    """The least CPU time of this thread over ``times`` calls: other processes on a busy machine do not count."""
    spent = []
    for _ in range(times):
        started = time.thread_time()
        call()
        spent.append(time.thread_time() - started)
    return min(spent)


@pytest.mark.slow
def test_status_and_list_of_task_ids_cost_the_same_per_id_at_four_times_the_ids(tmp_path):
    """2,000 and 8,000 task ids, each figure the least CPU time of five calls in the same run: the cost per id
    stays flat (within 3x: larger tables fit the CPU's caches less well, about 2x here)."""
    bookkeeping = benchmark("bookkeeping")
    figures = {}
    for tasks in (1000, 4000):
        manager = bookkeeping.with_tasks(tasks, tmp_path)
        try:
            ids = len(manager.status())
            listing = lister(manager)
            listing()
            figures[ids] = (best(manager.status), best(listing))
        finally:
            manager.close()
    (small, (status_small, list_small)), (large, (status_large, list_large)) = sorted(figures.items())
    said = f"{figures} (ids: (status s, list s))"
    assert large >= 4 * small - 10, said
    assert status_large / large <= 3 * status_small / small, said
    assert list_large / large <= 3 * list_small / small, said
