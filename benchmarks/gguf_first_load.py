"""The first use of a GGUF file in a fresh process: the manager's llama.cpp load against raw ``Llama()``.

    python benchmarks/gguf_first_load.py [--runs 7] [--json out.json]

Each figure is taken in its own fresh Python process, so nothing is cached
(not our header cache, not llama.cpp's): a raw ``llama_cpp.Llama(path)`` and
the manager's ``load()`` of the same file, with the same ``n_ctx`` and
threads, alternated run by run so that both see the same machine load. The
library is imported before the clock starts in both (its import is not load
time). Also: the first ``status()`` of a manager with the file registered,
which reads its header. Prints the median of the runs with their range and
the ratio manager / raw per pair of runs; the goal is at most 1.2.
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

CONTEXT = 2048
GOAL = 1.2


def child(mode: str) -> float:
    """Seconds of one first use, measured in this (fresh) process."""
    import llama_cpp

    from jupyter_llm_manager import LLMManager
    from jupyter_llm_manager.backends.llama_cpp.backend import usable_cores
    from jupyter_llm_manager.models.builtin import smollm2_file

    path = smollm2_file()
    assert path is not None
    if mode == "raw":
        started = time.perf_counter()
        llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT, n_threads=usable_cores(),
                        n_threads_batch=usable_cores(), verbose=False)
        return time.perf_counter() - started
    manager = LLMManager(config_path=False, preload=False)
    manager.register("cpp", source=str(path), backend="llama_cpp", max_context=CONTEXT)
    started = time.perf_counter()
    if mode == "manager":
        manager.load("cpp")
    else:
        rows = manager.status()
        assert rows and all(row.error is None for row in rows), [row.error for row in rows]
    seconds = time.perf_counter() - started
    manager.close()
    return seconds


def fresh(mode: str) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", mode], capture_output=True, text=True, env=env,
                          check=True, timeout=600)
    return float(done.stdout.strip().splitlines()[-1])


def spread(values: list[float], unit: str = "s", digits: int = 3) -> str:
    return f"{statistics.median(values):.{digits}f} {unit} ({min(values):.{digits}f}–{max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--child", choices=("raw", "manager", "status"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(child(args.child))
        return 0
    from jupyter_llm_manager.backends.llama_cpp.backend import usable_cores
    from jupyter_llm_manager.models.builtin import INSTALL_HINT, smollm2_file

    path = smollm2_file()
    if path is None:
        print(f"the SmolLM2 file is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 1
    fresh("raw")  # one run unmeasured: the file into the page cache, the libraries into the disk cache
    runs = []
    for index in range(args.runs):
        order = ("raw", "manager") if index % 2 == 0 else ("manager", "raw")
        figures = {mode: fresh(mode) for mode in order}
        figures["status"] = fresh("status")
        runs.append(figures)
    ratios = [run["manager"] / run["raw"] for run in runs]
    print(f"SmolLM2-135M-Instruct Q4_1 ({path.stat().st_size / 1e6:.0f} MB), {usable_cores()} cores, n_ctx {CONTEXT}, "
          f"{args.runs} alternated runs, each in a fresh process: median (range)\n")
    print("| figure | seconds |\n|---|---|")
    print(f"| raw `Llama()` | {spread([r['raw'] for r in runs])} |")
    print(f"| manager `load()` | {spread([r['manager'] for r in runs])} |")
    print(f"| manager / raw | {spread(ratios, unit='x', digits=2)} |")
    print(f"| first `status()` (reads the header) | {spread([r['status'] for r in runs])} |")
    verdict = "meets" if statistics.median(ratios) <= GOAL else "misses"
    print(f"\nThe median ratio {verdict} the goal of at most {GOAL}x.")
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
