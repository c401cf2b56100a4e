"""The real SmolLM2-135M-Instruct GGUF file, through the manager and through the raw libraries, in one run.

    python benchmarks/real_models.py [--runs 3] [--tokens 64] [--json out.json] [--threads-only] [--busy 1]

For each backend, side by side with the library it wraps, on the same file
and prompt (greedy, chat template):

- transformers: a cold load (the manager converts the GGUF file and keeps a
  copy; raw ``from_pretrained(gguf_file=...)`` dequantizes it every time),
  the manager's cached load (from its converted copy), and tokens per second;
- llama.cpp: a load (memory-mapped) and tokens per second, the manager
  against ``llama_cpp.Llama`` with the same ``n_ctx``.

The manager chooses each request's threads from the idle cores (llama.cpp
and torch alike); the raw libraries run a thread on every usable core, so
on a busy machine the speed figures include that choice.

Each run starts with an empty converted-copy cache. Prints a Markdown table:
the median of the runs with their range, and the ratios manager / raw
(speed: raw / manager, so that above 1 means the manager is slower).

Then llama.cpp's thread count (the second table; ``--threads-only`` prints
only it): tokens per second through the manager with the old choice (a
thread on every usable core) and the new one (the physical cores, within
the CPUs idle when the request starts), on a machine as it is ("idle") and
with ``--busy`` CPUs kept busy by spinning processes, in the same run. The
repetition penalty is off in every speed figure (``repetition_penalty=1.0``),
so both sides make the same tokens as the raw library.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.backends.llama_cpp.backend import usable_cores
from jupyter_llm_manager.backends.llama_cpp.options import ThreadChoice, core_budget, cpu_snapshot, idle_cpus
from jupyter_llm_manager.backends.transformers.support import library_progress_off
from jupyter_llm_manager.models.builtin import INSTALL_HINT, smollm2_file

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
CONTEXT = 2048


def raw_transformers_load(path: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with library_progress_off(gguf=True):  # the same quiet load as the manager's, so bars cost neither
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return tokenizer, model


def raw_transformers_speed(tokenizer, model, tokens: int) -> float:
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    started = time.perf_counter()
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
    tokenizer.decode(output[0, inputs["input_ids"].shape[-1]:], skip_special_tokens=True)
    return tokens / (time.perf_counter() - started)


def raw_llama_load(path: Path):
    import llama_cpp

    return llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT, n_threads=usable_cores(),
                           n_threads_batch=usable_cores(), verbose=False)


def raw_llama_speed(model, tokens: int) -> float:
    started = time.perf_counter()
    answer = model.create_chat_completion([{"role": "user", "content": PROMPT}], max_tokens=tokens, temperature=0)
    return answer["usage"]["completion_tokens"] / (time.perf_counter() - started)


def timed(action) -> tuple[float, object]:
    gc.collect()
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def one_run(path: Path, tokens: int, with_llama: bool) -> dict[str, float]:
    """Every figure once, with an empty cache of converted copies."""
    figures: dict[str, float] = {}
    os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jlm-bench-")
    seconds, (tokenizer, model) = timed(lambda: raw_transformers_load(path))
    figures["hf cold raw"] = seconds
    figures["hf tok/s raw"] = raw_transformers_speed(tokenizer, model, tokens)
    del tokenizer, model
    manager = LLMManager(config_path=False, preload=False)
    manager.register("hf", source=str(path), backend="transformers", max_context=CONTEXT)
    figures["hf cold manager"], _ = timed(lambda: manager.load("hf"))
    manager.unload("hf")
    figures["hf cached manager"], _ = timed(lambda: manager.load("hf"))
    result = manager.generate("hf", PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False,
                              repetition_penalty=1.0)
    figures["hf tok/s manager"] = result.completion_tokens / result.seconds
    manager.unload("hf")
    if with_llama:
        seconds, model = timed(lambda: raw_llama_load(path))
        figures["cpp load raw"] = seconds
        raw_llama_speed(model, 8)  # the first call builds the chat template: not part of the speed
        figures["cpp tok/s raw"] = raw_llama_speed(model, tokens)
        model.close()
        del model
        manager.register("cpp", source=str(path), backend="llama_cpp", max_context=CONTEXT)
        figures["cpp load manager"], _ = timed(lambda: manager.load("cpp"))
        manager.generate("cpp", PROMPT, max_new_tokens=8, temperature=0, repetition_penalty=1.0)
        result = manager.generate("cpp", PROMPT, max_new_tokens=tokens, temperature=0, repetition_penalty=1.0)
        figures["cpp tok/s manager"] = result.completion_tokens / result.seconds
    manager.close()
    return figures


def spread(values: list[float], unit: str) -> str:
    low, mid, high = min(values), statistics.median(values), max(values)
    digits = 2 if unit == "s" else 1
    return f"{mid:.{digits}f} {unit} ({low:.{digits}f}–{high:.{digits}f})"


def table(runs: list[dict[str, float]]) -> str:
    def column(name: str) -> list[float]:
        return [run[name] for run in runs]

    def ratio(ours: str, raw: str, invert: bool = False) -> str:
        ratios = sorted((r[raw] / r[ours]) if invert else (r[ours] / r[raw]) for r in runs)
        return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f})"

    lines = ["| backend | figure | manager | raw library | manager / raw |", "|---|---|---|---|---|",
             (f"| transformers (GGUF, float32) | cold load | {spread(column('hf cold manager'), 's')} | "
             f"{spread(column('hf cold raw'), 's')} | {ratio('hf cold manager', 'hf cold raw')} |"),
             (f"| transformers (GGUF, float32) | cached load (converted copy) | "
             f"{spread(column('hf cached manager'), 's')} | — | cold / cached: "
             f"{statistics.median(r['hf cold manager'] / r['hf cached manager'] for r in runs):.0f}x |"),
             (f"| transformers (GGUF, float32) | tokens per second | {spread(column('hf tok/s manager'), 'tok/s')} | "
             f"{spread(column('hf tok/s raw'), 'tok/s')} | {ratio('hf tok/s manager', 'hf tok/s raw', True)} |")]
    if "cpp load raw" in runs[0]:
        lines += [(f"| llama.cpp (Q4_1) | load | {spread(column('cpp load manager'), 's')} | "
                  f"{spread(column('cpp load raw'), 's')} | {ratio('cpp load manager', 'cpp load raw')} |"),
                  (f"| llama.cpp (Q4_1) | tokens per second | {spread(column('cpp tok/s manager'), 'tok/s')} | "
                  f"{spread(column('cpp tok/s raw'), 'tok/s')} | {ratio('cpp tok/s manager', 'cpp tok/s raw', True)} |")]
    return "\n".join(lines)


# -- llama.cpp's threads ------------------------------------------------------------------------------------

def busy_cpus(count: int) -> list[subprocess.Popen]:
    """``count`` processes that each keep one CPU busy (other work on a shared machine) until terminated."""
    return [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]


def idle_now() -> float:
    """The usable CPUs idle over the next half second."""
    before = cpu_snapshot()
    time.sleep(0.5)
    after = cpu_snapshot()
    return idle_cpus(before, after) if before and after else float("nan")


def thread_figures(path: Path, tokens: int, busy: int, runs: int) -> dict[str, list[float]]:
    """tokens/s and threads of the old and the new choice, idle and with ``busy`` CPUs busy."""
    manager = LLMManager(config_path=False, preload=False)
    every = usable_cores()
    manager.register("old", source=str(path), backend="llama_cpp", max_context=CONTEXT,
                     load_kwargs={"n_threads": every, "n_threads_batch": every})
    manager.register("new", source=str(path), backend="llama_cpp", max_context=CONTEXT)
    figures: dict[str, list[float]] = {}
    try:
        for model_id in ("old", "new"):
            manager.generate(model_id, PROMPT, max_new_tokens=8, temperature=0, repetition_penalty=1.0)
        for condition, spinners in (("idle", 0), (f"{busy} busy", busy)):
            workers = busy_cpus(spinners)
            try:
                time.sleep(ThreadChoice.LOOK_SECONDS * 4)  # the spinners start
                figures.setdefault(f"{condition} idle CPUs", []).append(idle_now())
                for model_id in ("old", "new"):  # one model's runs in a row: the other's never count as busy CPUs
                    for _ in range(runs):
                        time.sleep(0.3)  # each request starts after an idle moment, as a user's would
                        result = manager.generate(model_id, PROMPT, max_new_tokens=tokens, temperature=0,
                                                  repetition_penalty=1.0)
                        figures.setdefault(f"{condition} {model_id} tok/s", []).append(result.tokens_per_second)
                        figures.setdefault(f"{condition} {model_id} threads", []).append(
                            manager.row(model_id).details["threads"])
            finally:
                for worker in workers:
                    worker.terminate()
                    worker.wait()
    finally:
        manager.close()
    return figures


def thread_table(figures: dict[str, list[float]], busy: int) -> str:
    header = ("| condition | CPUs idle at the start | old: every usable core | new: physical cores within the idle "
              "CPUs | new / old |")
    lines = [header, "|---|---|---|---|---|"]
    for condition in ("idle", f"{busy} busy"):
        old, new = figures[f"{condition} old tok/s"], figures[f"{condition} new tok/s"]
        threads = sorted(set(figures[f"{condition} new threads"]))
        ratios = sorted(n / o for n, o in zip(new, old))
        lines.append(
            f"| {condition} | {statistics.median(figures[f'{condition} idle CPUs']):.1f} | "
            f"{spread(old, 'tok/s')}, {figures[f'{condition} old threads'][0]} threads | "
            f"{spread(new, 'tok/s')}, {'/'.join(map(str, threads))} threads | "
            f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}–{ratios[-1]:.2f}) |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    parser.add_argument("--threads-only", action="store_true", help="only llama.cpp's thread comparison")
    parser.add_argument("--busy", type=int, default=1, help="CPUs kept busy in the thread comparison")
    args = parser.parse_args()
    path = smollm2_file()
    if path is None:
        print(f"the SmolLM2 file is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 1
    import importlib.util

    with_llama = importlib.util.find_spec("llama_cpp") is not None
    results: dict[str, object] = {}
    if not args.threads_only:
        import torch  # imported before timing anything: first imports are not load time

        torch.set_num_threads(usable_cores())
        runs = [one_run(path, args.tokens, with_llama) for _ in range(args.runs)]
        print(f"SmolLM2-135M-Instruct Q4_1 ({path.stat().st_size / 1e6:.0f} MB), {usable_cores()} cores, "
              f"{args.tokens} greedy tokens, n_ctx {CONTEXT}, {args.runs} runs: median (range)\n")
        print(table(runs))
        results["runs"] = runs
    if with_llama:
        figures = thread_figures(path, args.tokens, args.busy, args.runs)
        print(f"\nllama.cpp threads: {usable_cores()} usable CPUs, {core_budget()} physical cores within them, "
              f"load average {', '.join(f'{x:.1f}' for x in os.getloadavg())} before; {args.tokens} greedy "
              f"tokens, n_ctx {CONTEXT}, {args.runs} runs per cell: median (range)\n")
        print(thread_table(figures, args.busy))
        results["threads"] = figures
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
