"""The manager's bookkeeping at scale: status views from 10 to 10,000 ids, and many threads on few models.

    python benchmarks/bookkeeping.py [--quick] [--threads 50] [--seconds 5] [--json out.json]

1. ``status()`` and ``%llm list`` with N registered models (every other one
   with an alias), and with N tasks of two options each, for N = 10 ... 10,000:
   milliseconds, and per id (linear bookkeeping keeps the per-id cost flat);
   the first ``status()``, which builds every row, and ``status()`` and
   ``%llm list`` right after one more id is registered (only its row is new);
   then ``status()`` and ``%llm list`` of 10,000 ids while models load and
   unload between calls, and the HTML a notebook also renders for the largest
   listing. ``--quick`` (CI): N up to 1,000, 10 threads for 1 s.
2. ``--threads`` threads loading, using and generating on 5 models under a
   cap of 2, with an in-process backend whose loads take no time: CPU per
   operation and how many times a waiting thread woke up per operation.

No model weights: the specs name Hub ids that are never loaded (part 1) and an
in-process backend (part 2), so what is measured is the manager alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

from IPython.utils.capture import capture_output

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.backends import Backend, LoadedModel
from jupyter_llm_manager.frontends.notebook.arguments import LINE_PARSER, parse
from jupyter_llm_manager.frontends.notebook.chats import ChatSessions
from jupyter_llm_manager.frontends.notebook.line_commands import LineCommands
from jupyter_llm_manager.frontends.views.registry import registry_table
from jupyter_llm_manager.generation import GenerationResult
from jupyter_llm_manager.manager import state as state_module
from jupyter_llm_manager.reports import MemoryEstimate

SIZES = (10, 100, 1000, 10_000)


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def lister(manager: LLMManager):
    """``%llm list`` as a notebook runs it again and again (one magics object), its text captured."""
    commands = LineCommands(lambda: manager, ChatSessions(), lambda model_id: model_id)

    def listing() -> None:
        with capture_output():
            commands.run(parse(LINE_PARSER, "list"))

    return listing


def views(manager: LLMManager) -> tuple[float, float, float]:
    """Seconds for status() and for %llm list (its table built and rendered as text), each the best of three
    (as a notebook or a dashboard asks again and again), and for the first %llm list, which builds every row."""
    listing = lister(manager)
    first = timed(listing)
    return min(timed(manager.status) for _ in range(3)), min(timed(listing) for _ in range(3)), first


def after_one_registration(manager: LLMManager, rounds: int = 5) -> tuple[float, float]:
    """Seconds for status() and for %llm list right after one more id is registered (a notebook registering
    while a dashboard refreshes), each the median of ``rounds``: the rows of the other ids are kept."""
    listing = lister(manager)
    listing()
    statuses, listings = [], []
    for index in range(rounds):
        manager.register(f"extra{index}", source=f"org/extra-{index}")
        statuses.append(timed(manager.status))
        manager.register(f"more{index}", source=f"org/more-{index}")
        listings.append(timed(listing))
    return statistics.median(statuses), statistics.median(listings)


def html_of_listing(manager: LLMManager) -> float:
    """Seconds for the HTML of the %llm list table, which a notebook renders beside the text."""
    table = registry_table(manager.status(), manager.spec, manager.default_model)
    return min(timed(table.html) for _ in range(2))


def with_models(count: int) -> LLMManager:
    manager = LLMManager(config_path=False, preload=False)
    for index in range(count):
        manager.register(f"m{index}", source=f"org/model-{index}")
        if index % 2:
            manager.alias(f"alias{index}", f"m{index}")
    return manager


def while_models_move(count: int, rounds: int = 7) -> tuple[float, float, float]:
    """status() of ``count`` ids while models load and unload between calls: (first call, median) seconds,
    and the median of %llm list in the same conditions.

    Eight of the ids are instant models; before each call one of them loads and another unloads, as a
    dashboard refreshing during a session sees.
    """
    backend = Instant()
    manager = LLMManager(config_path=False, preload=False, cooperate=False, backend_factory=lambda name: backend)
    for index in range(count):
        manager.register(f"m{index}", source=f"org/model-{index}", backend="instant", device="cpu")
    first = timed(manager.status)
    listing = lister(manager)
    listing()
    times, listings = [], []
    for round_ in range(rounds):
        manager.load(f"m{round_ % 8}")
        manager.unload(f"m{(round_ + 3) % 8}")
        times.append(timed(manager.status))
        manager.load(f"m{(round_ + 5) % 8}")
        listings.append(timed(listing))
    manager.close()
    return first, statistics.median(times), statistics.median(listings)


def with_tasks(count: int, folder: Path) -> LLMManager:
    lines = ["tasks:"]
    for index in range(count):
        lines += [f"  t{index}:", "    selected: a", "    options:",
                  f"      a: {{model_id: org/a-{index}, vram_gb: 1}}", f"      b: {{model_id: org/b-{index}, vram_gb: 2}}"]
    path = folder / f"tasks-{count}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return LLMManager(config_path=path, preload=False)


class Weights:
    """Stands for a model object."""


class Instant(Backend):
    """Loads in no time and echoes: what remains is the manager's own work."""

    name = "instant"

    def estimate(self, spec):
        return MemoryEstimate(spec.id, 10**9, 0, 0, 10**9, "declared", "none", "none")

    def load(self, spec, placement):
        return LoadedModel(model=Weights(), footprint={device: 10**9 for device in placement.devices})

    def stream(self, loaded, prompt, params, *, model_id, raw, stop):
        yield "ok"
        return GenerationResult(model_id, "ok", 1, 1, 0.0)


def threads_on_few_models(threads: int, seconds: float) -> dict[str, float]:
    """CPU seconds and wake-ups per operation with ``threads`` threads on 5 models under a cap of 2."""
    backend = Instant()
    manager = LLMManager(config_path=False, preload=False, max_loaded_models=2, backend_factory=lambda name: backend)
    for index in range(5):
        manager.register(f"m{index}", source=f"org/m{index}", backend="instant", device="cpu")
    wakeups = [0]
    real_wait = state_module.wait_for

    def counted(condition, deadline):
        wakeups[0] += 1
        real_wait(condition, deadline)

    state_module.wait_for = counted
    operations = [0]
    stop = threading.Event()

    def work(seed: int) -> None:
        chooser = random.Random(seed)
        while not stop.is_set():
            model_id = f"m{chooser.randrange(5)}"
            if chooser.random() < 0.5:
                manager.generate(model_id, "hi", wait=60)
            else:
                with manager.use(model_id, wait=60):
                    pass
            operations[0] += 1

    workers = [threading.Thread(target=work, args=(seed,)) for seed in range(threads)]
    cpu, wall = time.process_time(), time.perf_counter()
    for worker in workers:
        worker.start()
    stop.wait(seconds)
    stop.set()
    for worker in workers:
        worker.join(60)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    state_module.wait_for = real_wait
    manager.close()
    count = max(operations[0], 1)
    return {"operations": operations[0], "seconds": wall, "cpu_ms_per_operation": 1000 * cpu / count,
            "wakeups_per_operation": wakeups[0] / count}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--quick", action="store_true", help="a short form (CI): up to 1,000 ids, 10 threads for 1 s")
    args = parser.parse_args()
    sizes = SIZES[:-1] if args.quick else SIZES
    if args.quick:
        args.threads, args.seconds = 10, 1.0
    folder = Path(tempfile.mkdtemp(prefix="llm-bookkeeping-"))
    warm_up = with_models(1)
    warm_up.status()  # the imports the process's first status() pays once are not counted below
    warm_up.close()
    figures: dict[str, object] = {"models": {}, "tasks": {}}
    print("ids      status()      per id     %llm list     per id   (the first %llm list; the first status(); "
          "status() and %llm list after one registration)")
    for kind, make in (("models", with_models), ("tasks", lambda n: with_tasks(n, folder))):
        for count in sizes:
            manager = make(count)
            started = time.perf_counter()
            ids = len(manager.status())
            first_status = time.perf_counter() - started
            status, listing, first_listing = views(manager)
            if kind == "tasks" and count == sizes[-1]:
                figures["html_s"] = html_seconds = html_of_listing(manager)
            registered_status, registered_listing = after_one_registration(manager)
            manager.close()
            figures[kind][count] = {"ids": ids, "status_s": status, "list_s": listing,  # type: ignore[index]
                                    "first_list_s": first_listing, "first_status_s": first_status,
                                    "after_register_status_s": registered_status,
                                    "after_register_list_s": registered_listing}
            print(f"{ids:>6} {kind:<7} {status * 1000:8.1f} ms {status / ids * 1e6:7.1f} µs "
                  f"{listing * 1000:9.1f} ms {listing / ids * 1e6:7.1f} µs   ({first_listing * 1000:.1f} ms; "
                  f"{first_status * 1000:.1f} ms; {registered_status * 1000:.1f} ms, "
                  f"{registered_listing * 1000:.1f} ms)")
    print(f"the HTML of the last listing (a notebook renders it beside the text): {html_seconds * 1000:.1f} ms")
    first, moving, moving_list = while_models_move(max(sizes))
    figures["moving"] = {"ids": max(sizes), "first_s": first, "median_s": moving, "list_median_s": moving_list}
    print(f"{max(sizes)} ids while models load and unload between calls: status() {moving * 1000:.1f} ms, "
          f"%llm list {moving_list * 1000:.1f} ms (medians of 7; the first status(), which reads every model's "
          f"facts, {first * 1000:.1f} ms)")
    busy = threads_on_few_models(args.threads, args.seconds)
    figures["threads"] = {"threads": args.threads, **busy}
    print(f"{args.threads} threads on 5 models, cap 2, {busy['seconds']:.1f} s: {busy['operations']} operations, "
          f"{busy['cpu_ms_per_operation']:.3f} ms CPU and {busy['wakeups_per_operation']:.2f} wake-ups per operation")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
