"""What the manager costs over plain transformers, measured side by side in one run.

    python benchmarks/overhead.py [--device cpu|cuda:0] [--load-repeats 41] [--generate-repeats 7] [--json out.json]

Builds a ~210 MB Llama-style checkpoint offline (random weights), then times,
alternating manager and raw runs so drift hits both alike:

1. load: ``manager.load`` vs ``AutoTokenizer`` + ``AutoModelForCausalLM.from_pretrained``;
2. generation of a fixed number of greedy tokens: ``manager.generate`` vs
   ``model.generate`` on the same chat-templated prompt, decode included (repetition
   penalty off, so both paths decode the same tokens);
3. entering and leaving ``use()`` on a loaded model, alone and while another
   model loads in another thread;
4. model objects (modules, parameters) left alive after ``unload``.

Ratios are manager / raw: the median of per-round ratios (each round runs
both paths back to back, so slow drift of a shared machine cancels), with the
interquartile range beside it. Targets from issue 2.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import statistics
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import TYPE_CHECKING

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.models.tiny import TinyModelShape, build_tiny_model

if TYPE_CHECKING:
    from typing_extensions import Self

SHAPE = TinyModelShape(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                       num_key_value_heads=4, max_position_embeddings=2048, vocab_size=512, seed=11)
OTHER = TinyModelShape(hidden_size=384, intermediate_size=1024, num_hidden_layers=6, num_attention_heads=6,
                       num_key_value_heads=3, max_position_embeddings=2048, vocab_size=512, seed=12)
TOKENS = 64
PROMPT = "Explain in one paragraph why GPU memory must be freed after a model is unloaded."


def median(values: list[float]) -> float:
    return statistics.median(values)


def paired_ratio(ours: list[float], raw: list[float]) -> tuple[float, float, float]:
    """Median and interquartile range of the per-round ratios ours / raw."""
    ratios = sorted(a / b for a, b in zip(ours, raw))
    return median(ratios), percentile(ratios, 0.25), percentile(ratios, 0.75)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def raw_load(path: Path, device: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    kwargs = {} if device == "cpu" else {"device_map": {"": device}}
    model = AutoModelForCausalLM.from_pretrained(path, dtype="auto", **kwargs)
    model.eval()
    return tokenizer, model


def raw_generate(tokenizer, model) -> str:
    import torch

    inputs = tokenizer.apply_chat_template([{"role": "user", "content": PROMPT}], add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True).to(model.device)
    with torch.inference_mode():
        output = model.generate(**inputs, max_new_tokens=TOKENS, min_new_tokens=TOKENS, do_sample=False,
                                pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0, inputs["input_ids"].shape[-1]:], skip_special_tokens=True)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def alternate(repeats: int, ours, raw) -> tuple[list[float], list[float]]:
    """Time both paths ``repeats`` times, swapping which goes first each round."""
    mine, theirs = [], []
    for round_index in range(repeats):
        if round_index % 2:
            theirs.append(raw())
            mine.append(ours())
        else:
            mine.append(ours())
            theirs.append(raw())
    return mine, theirs


class LibraryClock:
    """Accumulates time spent inside transformers' ``from_pretrained`` calls."""

    def __init__(self) -> None:
        import transformers

        self.seconds = 0.0
        self.originals = {name: getattr(transformers, name).from_pretrained
                          for name in ("AutoTokenizer", "AutoModelForCausalLM")}

    def __enter__(self) -> Self:
        import transformers

        for name, original in self.originals.items():
            getattr(transformers, name).from_pretrained = self._timed(original)
        return self

    def __exit__(self, *exc_info) -> None:
        import transformers

        for name, original in self.originals.items():
            getattr(transformers, name).from_pretrained = original

    def _timed(self, original):
        def call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                self.seconds += time.perf_counter() - started
        return call


def measure_loads(manager: LLMManager, path: Path, device: str, repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Load timings of both paths, and the manager's own time per load (outside transformers)."""
    own: list[float] = []

    def ours() -> float:
        with LibraryClock() as library:
            seconds = timed(lambda: (manager.load("bench"), sync(device)))
        own.append(seconds - library.seconds)
        manager.unload("bench")
        return seconds

    def raw() -> float:
        holder = []
        seconds = timed(lambda: (holder.append(raw_load(path, device)), sync(device)))
        holder.clear()
        gc.collect()
        return seconds

    mine, theirs = alternate(repeats, ours, raw)
    return mine, theirs, own


def measure_generation(manager: LLMManager, path: Path, device: str,
                       repeats: int) -> tuple[list[float], list[float], list[float]]:
    """Generation timings of both paths, and the manager's extra time outside ``model.generate``.

    Both paths tokenize, generate and decode; the extra time is (manager total
    - its time in generate) - (raw total - its time in generate), per round.
    """
    tokenizer, model = raw_load(path, device)
    manager.load("bench")
    texts: dict[str, str] = {}
    inside = {"ours": 0.0, "raw": 0.0}
    model_class = type(model)
    original = model_class.generate

    def timed_generate(self, *args, **kwargs):
        started = time.perf_counter()
        try:
            return original(self, *args, **kwargs)
        finally:
            inside[current[0]] += time.perf_counter() - started

    current = ["ours"]
    outside: dict[str, list[float]] = {"ours": [], "raw": []}

    def run(which: str, action) -> float:
        current[0], inside[which] = which, 0.0
        seconds = timed(action)
        outside[which].append(seconds - inside[which])
        return seconds

    def ours() -> float:
        return run("ours", lambda: texts.__setitem__("ours", manager.generate(
            "bench", PROMPT, max_new_tokens=TOKENS, min_new_tokens=TOKENS, temperature=0,
            repetition_penalty=1.0).text))

    def raw() -> float:
        return run("raw", lambda: texts.__setitem__("raw", raw_generate(tokenizer, model)))

    model_class.generate = timed_generate
    try:
        ours(), raw()  # warm both paths once
        assert texts["ours"] == texts["raw"], "the two paths must do the same work"
        for timings in outside.values():
            timings.clear()
        mine, theirs = alternate(repeats, ours, raw)
    finally:
        model_class.generate = original
    extra = [a - b for a, b in zip(outside["ours"], outside["raw"])]
    return mine, theirs, extra


def lease_latencies(manager: LLMManager, count: int) -> list[float]:
    timings = []
    for _ in range(count):
        started = time.perf_counter()
        with manager.use("bench"):
            pass
        timings.append(time.perf_counter() - started)
    return timings


def lease_latencies_during_loads(manager: LLMManager, loads_wanted: int) -> tuple[list[float], int]:
    """``use()`` timings taken only while ``other`` is loading in another thread."""
    stop = threading.Event()
    loads = [0]

    def keep_loading():
        while not stop.is_set():
            manager.load("other")
            manager.unload("other")
            loads[0] += 1

    loader = threading.Thread(target=keep_loading)
    loader.start()
    timings: list[float] = []
    try:
        while loads[0] < loads_wanted:
            if manager.row("other").state == "loading":
                timings.append(timed(lambda: manager.use("bench").__enter__().__exit__(None, None, None)))
            else:
                time.sleep(0.0002)
    finally:
        stop.set()
        loader.join()
    return timings, loads[0]


def objects_left_after_unload(manager: LLMManager) -> int:
    manager.load("bench")
    with manager.use("bench") as lease:
        references = [weakref.ref(lease.model)] + [weakref.ref(m) for m in lease.model.modules()]
        references += [weakref.ref(p) for p in lease.model.parameters()]
    manager.unload("bench")
    return sum(ref() is not None for ref in references)


def iqr(bounds: tuple[float, float]) -> str:
    return f"IQR {bounds[0]:.3f}-{bounds[1]:.3f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda:N (default cpu)")
    parser.add_argument("--load-repeats", type=int, default=41)
    parser.add_argument("--generate-repeats", type=int, default=7)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch
    import transformers

    folder = Path(tempfile.mkdtemp(prefix="llm-bench-"))
    path = build_tiny_model(folder / "bench", SHAPE)
    other = build_tiny_model(folder / "other", OTHER)
    # A ledger of its own: what other notebooks on this machine hold must not move the figures.
    manager = LLMManager(config_path=False, preload=False, ledger_path=str(folder / "ledger.sqlite"))
    manager.register("bench", source=str(path), device=args.device)
    manager.register("other", source=str(other), device=args.device)

    raw_load(path, args.device)  # warm file caches and imports for both paths
    load_ours, load_raw, load_own = measure_loads(manager, path, args.device, args.load_repeats)
    gen_ours, gen_raw, gen_extra = measure_generation(manager, path, args.device, args.generate_repeats)
    alone = lease_latencies(manager, 20000)
    during, loads = lease_latencies_during_loads(manager, 8)
    left = objects_left_after_unload(manager)
    manager.close()

    figures = {
        "device": args.device, "torch": torch.__version__, "transformers": transformers.__version__,
        "python": sys.version.split()[0], "model_mb": round(sum(f.stat().st_size for f in path.glob("*.safetensors")) / 1e6, 1),
        "load_ratio": paired_ratio(load_ours, load_raw)[0],
        "load_ratio_iqr": paired_ratio(load_ours, load_raw)[1:],
        "load_manager_s": median(load_ours), "load_raw_s": median(load_raw),
        "load_manager_own_ms": median(load_own) * 1000,
        "generate_ratio": paired_ratio(gen_ours, gen_raw)[0],
        "generate_ratio_iqr": paired_ratio(gen_ours, gen_raw)[1:],
        "generate_manager_s": median(gen_ours), "generate_raw_s": median(gen_raw),
        "generate_manager_extra_ms": median(gen_extra) * 1000,
        "use_median_us": median(alone) * 1e6, "use_p99_us": percentile(alone, 0.99) * 1e6,
        "use_during_load_median_us": median(during) * 1e6 if during else None,
        "use_during_load_p99_us": percentile(during, 0.99) * 1e6 if during else None,
        "use_during_load_samples": len(during), "loads_meanwhile": loads,
        "objects_left_after_unload": left,
    }
    rows = [
        ("load, manager / raw transformers", f"{figures['load_ratio']:.3f} ({iqr(figures['load_ratio_iqr'])})",
         "<= 1.05",
         figures["load_ratio"] <= 1.05),
        ("generate 64 greedy tokens, manager / raw",
         f"{figures['generate_ratio']:.3f} ({iqr(figures['generate_ratio_iqr'])})", "<= 1.02",
         figures["generate_ratio"] <= 1.02),
        ("enter+leave use(), median", f"{figures['use_median_us']:.1f} µs", "<= 50 µs",
         figures["use_median_us"] <= 50),
        ("enter+leave use() while another model loads, p99",
         f"{figures['use_during_load_p99_us']:.0f} µs" if during else "n/a", "<= 1000 µs",
         bool(during) and figures["use_during_load_p99_us"] <= 1000),
        ("objects alive after unload", str(left), "0", left == 0),
    ]
    print(f"jupyter_llm_manager overhead — {args.device}, torch {torch.__version__}, transformers "
          f"{transformers.__version__}, {figures['model_mb']} MB model, {args.load_repeats} loads and "
          f"{args.generate_repeats} generations per path")
    width = max(len(r[0]) for r in rows)
    for name, value, target, met in rows:
        print(f"  {name:<{width}}  {value:>21}  target {target:<10} {'ok' if met else 'MISSED'}")
    print(f"  (load {figures['load_manager_s'] * 1000:.0f} ms vs {figures['load_raw_s'] * 1000:.0f} ms, of which "
          f"{figures['load_manager_own_ms']:.2f} ms is the manager's own work;\n   generate "
          f"{figures['generate_manager_s'] * 1000:.0f} ms vs {figures['generate_raw_s'] * 1000:.0f} ms, the manager adding "
          f"{figures['generate_manager_extra_ms']:.2f} ms outside model.generate; use() p99 "
          f"{figures['use_p99_us']:.1f} µs alone; {len(during)} samples during {loads} loads)")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
