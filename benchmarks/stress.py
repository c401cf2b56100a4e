"""Many threads doing everything at once to one manager, with the keep-alive reaper running.

    python benchmarks/stress.py [--threads 8] [--seconds 30] [--json out.json]

Four tiny real models (built offline), a CPU budget that fits two, a short
keep-alive. Each thread picks at random: register, load, use, generate,
stream, unload, pin/unpin, status. A monitor checks the invariants while it
runs. Reported: operations, errors by type (only the documented refusals are
expected), invariant violations, deadlocks (an operation that never
returns), model objects still alive after ``unload_all()``, and how long
requests waited in the queue for room (from their first ``waiting`` event to
their lease).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import gc
import json
import os
import random
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from jupyter_llm_manager import LLMManager, ModelInUseError, ResourceNotAvailableError
from jupyter_llm_manager.models.tiny import SMALL, build_tiny_model

MODELS = ("m0", "m1", "m2", "m3")
EXPECTED = (ResourceNotAvailableError, ModelInUseError)  # refusals the API documents for this load
DEADLOCK_S = 30.0
BUDGET_TOLERANCE = 1.005  # a load whose footprint exceeds its estimate by a few bytes, until it is settled


@dataclasses.dataclass
class Report:
    threads: int
    seconds: float
    operations: dict[str, int]
    errors: dict[str, int]
    unexpected: list[str]
    violations: list[str]
    deadlocks: list[str]
    alive_after_unload_all: int
    invariant_checks: int
    queue_waits: list[float] = dataclasses.field(default_factory=list)

    def wait_percentile(self, fraction: float) -> float:
        waits = sorted(self.queue_waits)
        return waits[min(int(fraction * len(waits)), len(waits) - 1)] if waits else 0.0

    @property
    def ok(self) -> bool:
        return not (self.unexpected or self.violations or self.deadlocks or self.alive_after_unload_all)

    def __str__(self) -> str:
        total = sum(self.operations.values())
        lines = [(f"{self.threads} threads for {self.seconds:.0f} s: {total} operations "
                 f"({total / self.seconds:.0f}/s), {self.invariant_checks} invariant checks"),
                 "  operations: " + ", ".join(f"{k} {v}" for k, v in sorted(self.operations.items())),
                 "  expected refusals: " + (", ".join(f"{k} {v}" for k, v in sorted(self.errors.items())) or "none"),
                 f"  unexpected errors: {len(self.unexpected)}",
                 f"  invariant violations: {len(self.violations)}",
                 f"  deadlocks: {len(self.deadlocks)}",
                 f"  model objects alive after unload_all(): {self.alive_after_unload_all}",
                 (f"  queue waits: {len(self.queue_waits)} requests waited for room, p50 "
                  f"{self.wait_percentile(0.5) * 1000:.0f} ms, p99 {self.wait_percentile(0.99) * 1000:.0f} ms, "
                  f"longest {max(self.queue_waits, default=0.0) * 1000:.0f} ms")]
        lines += [f"    {item}" for item in (self.unexpected + self.violations + self.deadlocks)[:10]]
        return "\n".join(lines)


def build_models(folder: Path) -> dict[str, Path]:
    return {name: build_tiny_model(folder / name, dataclasses.replace(SMALL, seed=index))
            for index, name in enumerate(MODELS)}


class Stress:
    """One run: the workers, the monitor, and what they saw."""

    def __init__(self, paths: dict[str, Path], threads: int, seconds: float, seed: int = 0) -> None:
        self.paths = paths
        self.threads = threads
        self.seconds = seconds
        self.seed = seed
        self.manager = LLMManager(memory_budget={"cpu": "40MB"}, keep_alive=0.5, config_path=False, preload=False)
        for name, path in paths.items():
            self.manager.register(name, source=str(path))
        self.lock = threading.Lock()
        self.operations: collections.Counter = collections.Counter()
        self.errors: collections.Counter = collections.Counter()
        self.unexpected: list[str] = []
        self.violations: list[str] = []
        self.leased: collections.Counter = collections.Counter()
        self.references: list[weakref.ref] = []
        self.busy_since: dict[int, tuple[str, float]] = {}
        self.stop = threading.Event()
        self.checks = 0
        self.queue_waits: list[float] = []
        self.waiting_since = threading.local()
        self.manager.subscribe(self.on_event)

    def run(self) -> Report:
        workers = [threading.Thread(target=self.work, args=(self.seed + i,), name=f"stress-{i}", daemon=True)
                   for i in range(self.threads)]
        monitor = threading.Thread(target=self.watch, name="stress-monitor", daemon=True)
        started = time.monotonic()
        monitor.start()
        for worker in workers:
            worker.start()
        time.sleep(self.seconds)  # the run's length, by definition: the workers check self.stop
        self.stop.set()
        deadlocks = []
        for worker in workers:
            worker.join(DEADLOCK_S)
            if worker.is_alive():
                operation, since = self.busy_since.get(worker.ident, ("?", started))
                deadlocks.append(f"{worker.name} stuck in {operation} for {time.monotonic() - since:.0f} s")
        monitor.join(DEADLOCK_S)
        elapsed = time.monotonic() - started
        self.manager.unload_all(wait=DEADLOCK_S)
        self.manager.close()
        gc.collect()
        alive = sum(ref() is not None for ref in self.references)
        return Report(self.threads, elapsed, dict(self.operations), dict(self.errors), self.unexpected,
                      self.violations, deadlocks, alive, self.checks, self.queue_waits)

    def on_event(self, event) -> None:
        """A request's queue wait: from its thread's first ``waiting`` event to its lease."""
        if event.kind == "waiting" and getattr(self.waiting_since, "value", None) is None:
            self.waiting_since.value = time.monotonic()
        elif event.kind == "generation_started":
            self.waited()

    def waited(self) -> None:
        since = getattr(self.waiting_since, "value", None)
        if since is not None:
            self.waiting_since.value = None
            with self.lock:
                self.queue_waits.append(time.monotonic() - since)

    # -- the workers ---------------------------------------------------------------------

    def work(self, seed: int) -> None:
        rng = random.Random(seed)
        actions = [self.load, self.use, self.generate, self.stream, self.unload, self.pin, self.status,
                   self.register]
        weights = [3, 3, 4, 2, 2, 1, 2, 1]
        while not self.stop.is_set():
            action = rng.choices(actions, weights)[0]
            model_id = rng.choice(MODELS)
            self.busy_since[threading.get_ident()] = (action.__name__, time.monotonic())
            try:
                action(model_id, rng)
                self.waited()  # load and use: the lease came when the call returned
                outcome = None
            except EXPECTED as error:
                self.waited()
                outcome = type(error).__name__
            except Exception as error:  # noqa: BLE001 - collected: the report lists every unexpected error
                outcome = "unexpected"
                with self.lock:
                    self.unexpected.append(f"{action.__name__}({model_id}): {type(error).__name__}: {error}")
            with self.lock:
                self.operations[action.__name__] += 1
                if outcome and outcome != "unexpected":
                    self.errors[outcome] += 1

    def load(self, model_id: str, rng: random.Random) -> None:
        self.manager.load(model_id)

    def use(self, model_id: str, rng: random.Random) -> None:
        with self.manager.use(model_id) as lease:
            with self.lock:
                self.leased[model_id] += 1
                self.references.append(weakref.ref(lease.model))
            try:
                assert lease.model.config.num_hidden_layers > 0  # the object is usable while leased
            finally:
                with self.lock:
                    self.leased[model_id] -= 1

    def generate(self, model_id: str, rng: random.Random) -> None:
        result = self.manager.generate(model_id, "Hello there", max_new_tokens=4, min_new_tokens=4)
        assert result.completion_tokens == 4

    def stream(self, model_id: str, rng: random.Random) -> None:
        stream = self.manager.stream(model_id, "Hi", max_new_tokens=6, min_new_tokens=6)
        with stream:
            for index, _ in enumerate(stream):
                if index == 2 and rng.random() < 0.5:
                    break  # a consumer that leaves early must release the model too

    def unload(self, model_id: str, rng: random.Random) -> None:
        self.manager.unload(model_id, wait=rng.choice([0.0, 0.2]))

    def pin(self, model_id: str, rng: random.Random) -> None:
        if rng.random() < 0.5:
            self.manager.pin(model_id)
        else:
            self.manager.unpin(model_id)

    def status(self, model_id: str, rng: random.Random) -> None:
        self.manager.status()
        self.manager.devices()

    def register(self, model_id: str, rng: random.Random) -> None:
        self.manager.register(model_id, source=str(self.paths[model_id]))  # the same spec: a no-op
        self.manager.alias(f"alias-{model_id}", model_id, overwrite=True)

    # -- the monitor ----------------------------------------------------------------------

    def watch(self) -> None:
        while not self.stop.wait(0.05):
            self.check()

    def check(self) -> None:
        self.checks += 1
        with self.lock:
            leased = {m for m, n in self.leased.items() if n > 0}
        rows = {row.id: row for row in self.manager.status()}
        for model_id in leased:
            if rows[model_id].state != "loaded" and self.leased[model_id] > 0:
                self.violations.append(f"{model_id} is leased but {rows[model_id].state}")
        for device in self.manager.devices():
            if device.held_bytes > device.budget_bytes * BUDGET_TOLERANCE:
                self.violations.append(f"{device.device}: {device.held_str} held over a {device.budget_str} budget")
        for name in (f"alias-{m}" for m in MODELS):
            try:
                target = self.manager.resolve(name)
            except KeyError:
                continue
            if target not in rows:
                self.violations.append(f"{name} resolves to {target}, which is not registered")


def run_stress(threads: int = 8, seconds: float = 30.0, folder: Path | None = None, seed: int = 0) -> Report:
    folder = folder or Path(tempfile.mkdtemp(prefix="llm-stress-"))
    return Stress(build_models(folder), threads, seconds, seed).run()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    report = run_stress(args.threads, args.seconds)
    print(report)
    if args.json:
        Path(args.json).write_text(json.dumps(dataclasses.asdict(report), indent=2))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
