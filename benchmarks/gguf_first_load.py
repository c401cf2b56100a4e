"""A GGUF file loaded by the manager against raw ``Llama()``: loads in one process, and a first answer in a fresh one.

    python benchmarks/gguf_first_load.py [--loads 10] [--runs 6] [--json out.json]

1. Loads, in this process: the manager's ``load()`` (its thread choice
   included) and a raw ``llama_cpp.Llama(path)`` with the same ``n_ctx`` and
   the thread count the manager chose, alternated (A, B, B, A, ...) so both
   see the same machine load, ``--loads`` pairs at ``n_ctx`` 2048 and at 512
   (where a fixed cost weighs most). Goal: the median ratio manager / raw at
   most 1.05.
2. A first answer, each in its own fresh Python process, so nothing is
   cached (not our header cache, not llama.cpp's): load and a short greedy
   answer (8 tokens), manager against raw with the thread count the
   manager's last run chose, alternated run by run. The library is imported
   before the clock starts in both (its import is not load time). Goal: at
   most 1.2. Also: the first ``status()`` of a manager with the file
   registered, which reads its header.

Prints min / median / max of the per-pair ratios and the machine's load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

CONTEXTS = (2048, 512)
FIRST_ANSWER_CONTEXT = 2048
PROMPT = "Name a colour."
ANSWER_TOKENS = 8
LOAD_GOAL = 1.05
FIRST_ANSWER_GOAL = 1.2


def raw_model(path: Path, context: int, threads: int):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=context, n_threads=threads, n_threads_batch=threads,
                           verbose=False)


def child(mode: str, threads: int) -> dict[str, float]:
    """One first use, measured in this (fresh) process: seconds, and the threads of the answer."""
    import llama_cpp  # noqa: F401 - imported before the clock starts, on both sides

    from jupyter_llm_manager import LLMManager
    from jupyter_llm_manager.models.builtin import smollm2_file

    path = smollm2_file()
    assert path is not None
    if mode == "raw":
        started = time.perf_counter()
        model = raw_model(path, FIRST_ANSWER_CONTEXT, threads)
        model.create_chat_completion([{"role": "user", "content": PROMPT}], max_tokens=ANSWER_TOKENS, temperature=0)
        return {"seconds": time.perf_counter() - started, "threads": threads}
    manager = LLMManager(config_path=False, preload=False)
    manager.register("cpp", source=str(path), backend="llama_cpp", max_context=FIRST_ANSWER_CONTEXT)
    started = time.perf_counter()
    if mode == "manager":
        manager.generate("cpp", PROMPT, max_new_tokens=ANSWER_TOKENS, temperature=0)
        chosen = manager.row("cpp").details["threads"]
    else:
        rows = manager.status()
        assert rows and all(row.error is None for row in rows), [row.error for row in rows]
        chosen = 0
    seconds = time.perf_counter() - started
    manager.close()
    return {"seconds": seconds, "threads": chosen}


def fresh(mode: str, threads: int) -> dict[str, float]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--threads", str(threads)],
                          capture_output=True, text=True, env=env, check=True, timeout=600)
    return json.loads(done.stdout.strip().splitlines()[-1])


def loads(path: Path, pairs: int) -> dict[str, dict[str, list[float]]]:
    """Seconds of manager and raw loads at each context, alternated; the threads the manager chose."""
    from jupyter_llm_manager import LLMManager

    raw_model(path, 512, 1).close()  # the file into the page cache, llama.cpp's first-use work done
    figures: dict[str, dict[str, list[float]]] = {}
    manager = LLMManager(config_path=False, preload=False)
    try:
        for context in CONTEXTS:
            model_id = f"cpp-{context}"
            manager.register(model_id, source=str(path), backend="llama_cpp", max_context=context)
            manager.load(model_id)  # its header read, once: not part of what is compared
            threads = manager.row(model_id).details["threads"]
            manager.unload(model_id)
            runs: dict[str, list[float]] = {"manager": [], "raw": [], "threads": []}
            for index in range(pairs * 2):
                if (index % 4) in (0, 3):  # A, B, B, A: neither side always goes first
                    started = time.perf_counter()
                    manager.load(model_id)
                    runs["manager"].append(time.perf_counter() - started)
                    threads = manager.row(model_id).details["threads"]
                    runs["threads"].append(threads)
                    manager.unload(model_id)
                else:
                    started = time.perf_counter()
                    model = raw_model(path, context, threads)
                    runs["raw"].append(time.perf_counter() - started)
                    model.close()
            figures[str(context)] = runs
    finally:
        manager.close()
    return figures


def ratios(ours: list[float], theirs: list[float]) -> list[float]:
    return sorted(a / b for a, b in zip(ours, theirs))


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    return (f"{statistics.median(values):.{digits}f} {unit} (min {min(values):.{digits}f}, "
            f"max {max(values):.{digits}f})")


def verdict(values: list[float], goal: float) -> str:
    return f"{'meets' if statistics.median(values) <= goal else 'misses'} the goal of at most {goal}x"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", type=int, default=10, help="pairs of loads at each context, in this process")
    parser.add_argument("--runs", type=int, default=6, help="pairs of fresh processes for the first answer")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--child", choices=("raw", "manager", "status"), help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.threads)))
        return 0
    from jupyter_llm_manager.backends.llama_cpp.options import core_budget, usable_cores
    from jupyter_llm_manager.models.builtin import INSTALL_HINT, smollm2_file

    path = smollm2_file()
    if path is None:
        print(f"the SmolLM2 file is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 1
    load_before = os.getloadavg()
    print(f"SmolLM2-135M-Instruct Q4_1 ({path.stat().st_size / 1e6:.0f} MB), {usable_cores()} usable CPUs, "
          f"{core_budget()} physical cores within them; load average "
          f"{', '.join(f'{x:.2f}' for x in load_before)} at the start\n")
    results: dict[str, object] = {"load_average_before": load_before}
    if args.loads:
        figures = loads(path, args.loads)
        print(f"1. load in this process, {args.loads} alternated pairs per context (raw with the manager's threads)\n")
        print("| n_ctx | manager `load()` | raw `Llama()` | manager / raw | threads |\n|---|---|---|---|---|")
        for context, runs in figures.items():
            print(f"| {context} | {spread(runs['manager'])} | {spread(runs['raw'])} | "
                  f"{spread(ratios(runs['manager'], runs['raw']), 'x', 2)} | "
                  f"{'/'.join(map(str, sorted(set(runs['threads']))))} |")
        for context, runs in figures.items():
            print(f"n_ctx {context}: the median ratio {verdict(ratios(runs['manager'], runs['raw']), LOAD_GOAL)}.")
        results["loads"] = figures
    if args.runs:
        fresh("raw", core_budget())  # one run unmeasured: the file into the page cache, the libraries too
        runs = []
        threads = core_budget()
        for index in range(args.runs):
            figures_of_run: dict[str, dict[str, float]] = {}
            for mode in (("manager", "raw") if index % 2 == 0 else ("raw", "manager")):
                figures_of_run[mode] = fresh(mode, threads)
                if mode == "manager":
                    threads = int(figures_of_run[mode]["threads"])
            figures_of_run["status"] = fresh("status", 0)
            runs.append(figures_of_run)
        first = ratios([r["manager"]["seconds"] for r in runs], [r["raw"]["seconds"] for r in runs])
        print(f"\n2. load and a {ANSWER_TOKENS}-token answer, each in a fresh process, n_ctx {FIRST_ANSWER_CONTEXT}, "
              f"{args.runs} alternated pairs (raw with the threads of the manager's last run)\n")
        print("| figure | seconds |\n|---|---|")
        print(f"| raw `Llama()` + `create_chat_completion` | {spread([r['raw']['seconds'] for r in runs])} |")
        print(f"| manager `generate()` (loads first) | {spread([r['manager']['seconds'] for r in runs])} |")
        print(f"| manager / raw | {spread(first, 'x', 2)} |")
        print(f"| first `status()` (reads the header) | {spread([r['status']['seconds'] for r in runs])} |")
        print(f"\nThreads the manager chose: {sorted({int(r['manager']['threads']) for r in runs})}; "
              f"the median ratio {verdict(first, FIRST_ANSWER_GOAL)}.")
        results["first_answer"] = runs
    print(f"load average at the end: {', '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
