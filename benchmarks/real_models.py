"""The real SmolLM2-135M-Instruct GGUF file, through the manager and through the raw libraries, in one run.

    python benchmarks/real_models.py [--runs 3] [--tokens 64] [--json out.json]

For each backend, side by side with the library it wraps, on the same file
and prompt (greedy, chat template):

- transformers: a cold load (the manager converts the GGUF file and keeps a
  copy; raw ``from_pretrained(gguf_file=...)`` dequantizes it every time),
  the manager's cached load (from its converted copy), and tokens per second;
- llama.cpp: a load (memory-mapped) and tokens per second, the manager
  against ``llama_cpp.Llama`` with the same ``n_ctx`` and threads.

Each run starts with an empty converted-copy cache. Prints a Markdown table:
the median of the runs with their range, and the ratios manager / raw
(speed: raw / manager, so that above 1 means the manager is slower).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.backends.llama_cpp import usable_cores
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
    result = manager.generate("hf", PROMPT, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
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
        manager.generate("cpp", PROMPT, max_new_tokens=8, temperature=0)
        result = manager.generate("cpp", PROMPT, max_new_tokens=tokens, temperature=0)
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    path = smollm2_file()
    if path is None:
        print(f"the SmolLM2 file is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 1
    import importlib.util

    import torch  # imported before timing anything: first imports are not load time

    torch.set_num_threads(usable_cores())
    with_llama = importlib.util.find_spec("llama_cpp") is not None
    runs = [one_run(path, args.tokens, with_llama) for _ in range(args.runs)]
    print(f"SmolLM2-135M-Instruct Q4_1 ({path.stat().st_size / 1e6:.0f} MB), {usable_cores()} cores, "
          f"{args.tokens} greedy tokens, n_ctx {CONTEXT}, {args.runs} runs: median (range)\n")
    print(table(runs))
    if args.json:
        args.json.write_text(json.dumps(runs, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
