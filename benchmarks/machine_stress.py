"""Many kernels on one machine and one budget, some killed and some stopped: is the budget ever over-committed?

    python benchmarks/machine_stress.py [--processes 10] [--seconds 60] [--json out.json]

Each process is a kernel with its own manager on one shared ledger and one
CPU budget (``memory_budget``, counted over every kernel), with three models
of its own (``loader`` models that hold a real bytearray of their declared
size). Each loads, uses for a moment, and unloads at random, with random
waits. Meanwhile the conductor SIGKILLs two of them and SIGSTOPs another for
a few seconds. Every process logs when each of its models held memory: from
its reservation (the ``loading`` event, room already taken) to the end of
its freeing (``evicted``, ``unloaded``) or of a failed load, or to its death.
Reported: the highest sum of what all kernels held at once against the
budget, operations and refusals per kind, and whether every living kernel
answered to the end (no deadlock).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

MB = 1000**2
SIZES = {"small": 8 * MB, "medium": 14 * MB, "large": 22 * MB}
BUDGET = 60 * MB

CHILD = r'''
import json, os, random, sys, time
from jupyter_llm_manager import LLMManager, ModelInUseError, ResourceNotAvailableError

def hold(spec):
    return bytearray(int(spec.options["size"]))

log = open(sys.argv[1], "a", buffering=1)
seconds, seed = float(sys.argv[2]), int(sys.argv[3])
sizes = json.loads(sys.argv[4])
budget = int(sys.argv[5])
random.seed(seed)

def write(**values):
    log.write(json.dumps({"at": time.time(), **values}) + "\n")

manager = LLMManager(config_path=False, preload=False, memory_budget={"cpu": budget}, wait_timeout=5)
manager.subscribe(lambda e: write(kind=e.kind, model=e.model_id, bytes=e.bytes)
                  if e.kind in ("loading", "loaded", "evicted", "unloaded", "load_failed") else None)
for name, size in sizes.items():
    manager.register(name, loader="__main__:hold", required_memory=size, device="cpu", options={"size": size})
end = time.monotonic() + seconds
while time.monotonic() < end:
    name = random.choice(list(sizes))
    action = random.random()
    try:
        if action < 0.5:
            with manager.use(name, wait=random.choice([0, 0.2, 1, 3])):
                time.sleep(random.uniform(0, 0.3))
            write(kind="op", op="use")
        elif action < 0.8:
            manager.load(name, wait=random.choice([0, 0.5, 2]))
            write(kind="op", op="load")
        else:
            manager.unload(name, wait=0.5)
            write(kind="op", op="unload")
    except (ResourceNotAvailableError, ModelInUseError) as error:
        write(kind="op", op="refused", error=type(error).__name__)
write(kind="done")
manager.close()
write(kind="closed")
'''


@dataclass
class Report:
    processes: int
    seconds: float
    budget: int
    peak: int = 0
    peak_at: float = 0.0
    operations: dict[str, int] = field(default_factory=dict)
    killed: int = 0
    stopped: int = 0
    finished: int = 0  # living kernels that ran to the end and closed
    hung: list[int] = field(default_factory=list)  # living kernels that did not finish in time

    def __str__(self) -> str:
        return (f"{self.processes} kernels for {self.seconds:g} s on one {self.budget / MB:g} MB budget: peak held "
                f"{self.peak / MB:.1f} MB ({self.peak / self.budget:.0%} of the budget); operations "
                f"{self.operations}; {self.killed} killed, {self.stopped} stopped for a while; {self.finished} "
                f"finished, {len(self.hung)} hung")


def run_machine_stress(processes: int, seconds: float, folder: Path, *, seed: int = 1) -> Report:
    """Run the kernels, kill and stop some of them, and read back what each held and when."""
    script = folder / "kernel.py"
    script.write_text(CHILD)
    env = {**os.environ, "JUPYTER_LLM_MANAGER_LEDGER": str(folder / "ledger.sqlite"), "HF_HUB_OFFLINE": "1"}
    logs = [folder / f"kernel-{index}.jsonl" for index in range(processes)]
    children = [subprocess.Popen([sys.executable, str(script), str(log), str(seconds), str(seed + index),
                                  json.dumps(SIZES), str(BUDGET)],
                                 env={**env, "JPY_SESSION_NAME": f"kernel-{index}.ipynb"}, stderr=subprocess.PIPE)
                for index, log in enumerate(logs)]
    report = Report(processes, seconds, BUDGET)
    rng = random.Random(seed)
    killed = set(rng.sample(range(processes), min(2, max(processes - 2, 0))))
    stopped = next((i for i in range(processes) if i not in killed), None)
    time.sleep(seconds / 3)  # the conductor's own pacing: not a wait on any condition under test
    deaths = {}
    for index in killed:
        children[index].kill()
        children[index].wait(30)
        deaths[index] = time.time()  # its memory is back once it is gone
    if stopped is not None:
        os.kill(children[stopped].pid, signal.SIGSTOP)
        time.sleep(min(4.0, seconds / 4))
        os.kill(children[stopped].pid, signal.SIGCONT)
    report.killed, report.stopped = len(killed), int(stopped is not None)
    for index, child in enumerate(children):
        try:
            child.wait(seconds + 60)
        except subprocess.TimeoutExpired:
            report.hung.append(index)
            child.kill()
            child.wait(10)
        if index not in killed and child.returncode == 0:
            report.finished += 1
    report.peak, report.peak_at = _peak(logs, deaths)
    report.operations = _operations(logs)
    return report


def _peak(logs: list[Path], deaths: dict[int, float]) -> tuple[int, float]:
    """The highest sum of memory held at once, over every kernel's reservations and releases."""
    changes: list[tuple[float, int]] = []
    for index, log in enumerate(logs):
        held: dict[str, tuple[float, int]] = {}
        for line in _lines(log):
            if line["kind"] == "loading":
                held[line["model"]] = (line["at"], SIZES[line["model"]])
            elif line["kind"] in ("evicted", "unloaded", "load_failed") and line["model"] in held:
                start, size = held.pop(line["model"])
                changes += [(start, size), (line["at"], -size)]
        end = deaths.get(index, float("inf"))
        for start, size in held.values():  # held at death (or at the end): until then
            changes += [(start, size), (end, -size)]
    peak, peak_at, now = 0, 0.0, 0
    for at, change in sorted(changes, key=lambda item: (item[0], item[1])):  # releases first at one instant
        now += change
        if now > peak:
            peak, peak_at = now, at
    return peak, peak_at


def _lines(log: Path) -> list[dict]:
    """What one kernel logged; nothing when it was killed before it opened its log (a slow start)."""
    if not log.exists():
        return []
    return [json.loads(text) for text in log.read_text().splitlines() if text.strip()]


def _operations(logs: list[Path]) -> dict[str, int]:
    counted: dict[str, int] = {}
    for log in logs:
        for line in _lines(log):
            if line["kind"] == "op":
                key = line["op"] if line["op"] != "refused" else f"refused ({line['error']})"
                counted[key] = counted.get(key, 0) + 1
    return counted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=10)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        report = run_machine_stress(args.processes, args.seconds, Path(folder))
    print(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2))
    if report.peak > report.budget or report.hung:
        sys.exit(1)


if __name__ == "__main__":
    main()
