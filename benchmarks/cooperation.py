"""Kernels sharing one machine: how fast another kernel makes room, and what cooperation costs ``use()``.

    python benchmarks/cooperation.py [--rounds 20] [--uses 20000] [--json out.json]

1. Two kernels (child processes, each with its own manager, tiny models on
   the CPU, one ledger, a budget that fits one model): kernel B loads its
   model, which needs the room of kernel A's idle model. Measured: from B's
   request to A's ``evicted`` event (``reason="other_kernel"``), p50 and p99,
   with A idle and with A busy running a cell (a pure-Python loop holding
   its main thread). Both processes read the same system-wide monotonic clock.
   Then B waits for A's model in use, and A's lease ends: from the end of the
   lease to B's reservation (its ``loading`` event), p50 and p90.
2. ``use()`` on a loaded model (enter and leave a lease), median in
   microseconds, with cooperation on (this manager is a member of the ledger
   and publishes from its thread) and off, in the same run.

No model weights are downloaded; the tiny models are built in a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from jlm_helpers.kernels import Kernel

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.models.tiny import SMALL, TinyModelShape, build_tiny_model

OTHER = TinyModelShape(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                       num_key_value_heads=4, max_position_embeddings=2048, vocab_size=320, seed=7)


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


def budget_for_one(models: dict[str, Path]) -> int:
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    try:
        for name, path in models.items():
            manager.register(name, source=str(path))
        return int(max(manager.estimate(name).total_bytes for name in models) * 1.5)
    finally:
        manager.close()


def eviction_latency(folder: Path, rounds: int) -> dict[str, list[float]]:
    """Seconds from B's request to A's eviction, A idle and A busy, ``rounds`` of each."""
    models = {"a": build_tiny_model(folder / "a", SMALL), "b": build_tiny_model(folder / "b", OTHER)}
    settings = {"memory_budget": {"cpu": budget_for_one(models)}, "wait_timeout": 60}
    specs = {name: {"source": str(path)} for name, path in models.items()}
    ledger = folder / "ledger.sqlite"
    a, b = Kernel("holder.ipynb", folder, ledger), Kernel("requester.ipynb", folder, ledger)
    latencies: dict[str, list[float]] = {"idle": [], "busy": [], "lease_end": []}
    try:
        for kernel in (a, b):
            assert kernel.ask("start", settings=settings, models=specs)["ok"], kernel.stderr_tail()
        for index in range(-1, rounds * 2):  # round -1 warms both kernels up (imports, first loads): not counted
            holder_busy = index % 2 == 1
            assert a.ask("load", id="a", wait=60)["ok"]  # takes the room back from B
            seen = len(a.ask("events")["events"])
            if holder_busy:
                a.send("busy", seconds=3.0)
            asked = time.monotonic()
            assert b.ask("load", id="b", wait=60)["ok"]
            if holder_busy:
                assert a.answer()["ok"]
            evicted = [e for e in a.ask("events")["events"][seen:] if e["kind"] == "evicted"]
            assert evicted and evicted[0]["reason"] == "other_kernel", evicted
            if index >= 0:
                latencies["busy" if holder_busy else "idle"].append(evicted[0]["at"] - asked)
        for _ in range(rounds):  # B waits for A's model in use; A's lease ends: how soon does B get the room?
            assert a.ask("load", id="a", wait=60)["ok"] and a.ask("hold", id="a")["ok"]
            seen = len(b.ask("events")["events"])
            b.send("load", id="b", wait=60)
            _queued(folder / "ledger.sqlite")
            released = time.monotonic()
            assert a.ask("release", id="a")["ok"]
            assert b.answer()["ok"]
            loading = [e for e in b.ask("events")["events"][seen:] if e["kind"] == "loading" and e["model"] == "b"]
            latencies["lease_end"].append(loading[0]["at"] - released)
    finally:
        a.close()
        b.close()
    return latencies


def _queued(ledger: Path) -> None:
    """Wait until a request waits in the machine-wide queue (B's, for A's model in use)."""
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    reader, deadline = Ledger(ledger), time.monotonic() + 30
    try:
        while not reader.requests():
            assert time.monotonic() < deadline, "the request never waited"
            time.sleep(0.01)
    finally:
        reader.close()


def use_overhead(folder: Path, uses: int) -> dict[str, float]:
    """Median microseconds of ``with manager.use(...)`` on a loaded model, cooperation on and off."""
    from bookkeeping import Instant  # the benchmark backend that loads in no time

    medians = {}
    backend = Instant()  # loads in no time, keeps no state: one for both managers
    for cooperate in (False, True):
        manager = LLMManager(config_path=False, preload=False, cooperate=cooperate,
                             ledger_path=str(folder / "use.sqlite"), backend_factory=lambda name: backend)
        try:
            manager.register("m", source="org/m", device="cpu")
            manager.load("m")
            samples = []
            for _ in range(uses):
                started = time.perf_counter()
                with manager.use("m"):
                    pass
                samples.append(time.perf_counter() - started)
            medians["on" if cooperate else "off"] = statistics.median(samples) * 1e6
        finally:
            manager.close()
    return medians


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=20, help="evictions measured with the holder idle, and busy")
    parser.add_argument("--uses", type=int, default=20_000, help="leases timed, cooperation on and off")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        latencies = eviction_latency(Path(folder), args.rounds)
        medians = use_overhead(Path(folder), args.uses)
    lease_end = latencies.pop("lease_end")
    results = {"eviction_ms": {state: {"p50": percentile(v, 0.5) * 1e3, "p99": percentile(v, 0.99) * 1e3,
                                        "rounds": len(v)} for state, v in latencies.items()},
               "lease_end_to_room_ms": {"p50": percentile(lease_end, 0.5) * 1e3,
                                        "p90": percentile(lease_end, 0.9) * 1e3, "rounds": len(lease_end)},
               "use_us": medians}
    print(f"Request to the other kernel's eviction ({args.rounds} rounds each, tiny models on the CPU):")
    for state, figures in results["eviction_ms"].items():
        print(f"  holder {state:4}: p50 {figures['p50']:7.1f} ms   p99 {figures['p99']:7.1f} ms")
    room = results["lease_end_to_room_ms"]
    print(f"A waiting request gets the room after the other kernel's lease ends: p50 {room['p50']:.1f} ms, "
          f"p90 {room['p90']:.1f} ms (goal: p90 <= 50 ms)")
    print(f"use() on a loaded model ({args.uses} leases): cooperation off {medians['off']:.1f} µs, "
          f"on {medians['on']:.1f} µs median (ratio {medians['on'] / medians['off']:.2f}×)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
