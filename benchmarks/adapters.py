"""Switching LoRA adapters through the manager vs reloading a merged copy per adapter, in one run.

    python benchmarks/adapters.py [--switches 8] [--tokens 16] [--rank 16] [--leases 300] [--quick] [--json out.json]

Builds a ~200 MB Llama-style checkpoint offline (random weights) and two
random LoRA adapters for it (rank ``--rank`` on every attention and MLP
projection), then measures, round by round so drift hits both alike:

(a) the manager: ``base`` registered once, the adapters as ``one`` and ``two``
    on it; a switch is ``manager.generate`` on the other adapter (the base
    stays resident, the adapter is made active before the request);
(b) what users do without it: each adapter merged into a full copy of the
    base (``merge_and_unload`` + ``save_pretrained``); a switch is dropping
    the loaded copy and ``AutoModelForCausalLM.from_pretrained`` of the other,
    then the same greedy generation.

It prints the seconds per switch (switch + generate, median and quartiles)
of each, their ratio, the generation alone on a loaded model (what a switch
would cost if it were free), the memory each way (base + adapters as the
manager counts them, vs two merged copies), and the conditions (CPU model,
threads, parameters, versions). ``--json FILE`` writes the same figures.

Then what a request on an adapter that is active already costs: entering and
leaving ``use()`` on a plain model, on the base with adapters on it and on
the active adapter (``--leases`` each, while the model answers as that id,
alternated with the plain model's; the goal is at most 50 µs, as on any
model), and the same greedy generation on the active
adapter through the manager and through PEFT itself (``PeftModel`` on its own
copy of the base), alternated, as the ratio manager / PEFT. ``--quick`` is
the short form CI runs (a smaller model, fewer rounds).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.models.tiny import TinyModelShape, build_tiny_model

SHAPE = TinyModelShape(hidden_size=768, intermediate_size=2048, num_hidden_layers=8, num_attention_heads=12,
                       num_key_value_heads=4, max_position_embeddings=2048, vocab_size=512, seed=11)
QUICK_SHAPE = TinyModelShape(hidden_size=256, intermediate_size=512, num_hidden_layers=4, num_attention_heads=4,
                             num_key_value_heads=2, max_position_embeddings=512, vocab_size=512, seed=11)
LEASE_GOAL_US = 50.0
PROMPT = "Explain in one paragraph why an adapter is cheaper to switch than a model."
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def quartiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    pick = lambda fraction: ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]
    return {"median": statistics.median(ordered), "q1": pick(0.25), "q3": pick(0.75)}


def make_adapter(base: Path, folder: Path, seed: int, rank: int) -> Path:
    """A random LoRA (non-zero B: it changes the answers) saved as a PEFT folder."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base),
                           LoraConfig(r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS),
                                      init_lora_weights=False))
    model.save_pretrained(folder)
    return folder


def make_merged(base: Path, adapter: Path, folder: Path) -> Path:
    """The base with the adapter merged in, saved as a full checkpoint (what users keep without adapters)."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).merge_and_unload()
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(base).save_pretrained(folder)
    return folder


class MergedCopies:
    """The path without the manager: one merged copy loaded at a time, reloaded on each switch."""

    def __init__(self, folders: dict[str, Path], tokens: int) -> None:
        self.folders = folders
        self.tokens = tokens
        self.name: str | None = None
        self.model: Any = None
        self.tokenizer: Any = None

    def switch_to(self, name: str) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model = self.tokenizer = None
        gc.collect()
        self.tokenizer = AutoTokenizer.from_pretrained(self.folders[name])
        self.model = AutoModelForCausalLM.from_pretrained(self.folders[name], dtype="auto").eval()
        self.name = name

    def generate(self) -> int:
        import torch

        inputs = self.tokenizer(PROMPT, return_tensors="pt")
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.tokens, do_sample=False,
                                         repetition_penalty=1.0, pad_token_id=self.tokenizer.eos_token_id)
        return int(output.shape[-1] - inputs["input_ids"].shape[-1])

    def reload_and_generate(self, name: str) -> int:
        self.switch_to(name)
        return self.generate()

    def bytes(self) -> int:
        return sum(p.nbytes for p in self.model.parameters()) + sum(b.nbytes for b in self.model.buffers())


def timed(action) -> tuple[float, Any]:
    started = time.perf_counter()
    value = action()
    return time.perf_counter() - started, value


def lease_figures(manager: LLMManager, base: Path, adapter: Path, root: Path, args: argparse.Namespace
                  ) -> dict[str, Any]:
    """``use()`` on a plain model, the base with adapters, the active adapter; generation: manager vs PEFT."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    plain = build_tiny_model(root / "plain", QUICK_SHAPE if args.quick else SHAPE)
    manager.register("plain", source=str(plain))
    manager.load("plain")
    microseconds: dict[str, list[float]] = {"plain": [], "base": [], "one": []}
    for model_id in ("base", "one"):  # each id's leases while the model answers as it: paired with a plain model's
        with manager.use(model_id):  # the switch, not timed
            pass
        for index in range(args.leases):
            for lease_id in ((model_id, "plain") if index % 2 else ("plain", model_id)):
                started = time.perf_counter()
                with manager.use(lease_id):
                    pass
                microseconds[lease_id].append((time.perf_counter() - started) * 1e6)
    tokenizer = AutoTokenizer.from_pretrained(base)
    peft_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapter).eval()
    greedy = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": args.tokens,
              "min_new_tokens": args.tokens}

    def raw() -> None:
        inputs = tokenizer(PROMPT, return_tensors="pt")
        with torch.inference_mode():
            peft_model.generate(**inputs, **greedy, pad_token_id=tokenizer.eos_token_id)

    def ours() -> None:
        manager.generate("one", PROMPT, raw=True, **greedy)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread on both sides (a count set by the user: the manager keeps it)
    try:
        raw()
        seconds: dict[str, list[float]] = {"manager": [], "peft": []}
        for index in range(args.switches * 2):
            for label, run in ((("manager", ours), ("peft", raw)) if index % 2 else (("peft", raw), ("manager", ours))):
                seconds[label].append(timed(run)[0])
    finally:
        torch.set_num_threads(threads)
    return {"lease_us": {model_id: quartiles(values) for model_id, values in microseconds.items()},
            "generation_seconds": {label: quartiles(values) for label, values in seconds.items()},
            "generation_ratios": sorted(a / b for a, b in zip(seconds["manager"], seconds["peft"]))}


def measure(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import torch

    base = build_tiny_model(root / "base", QUICK_SHAPE if args.quick else SHAPE)
    adapters = {name: make_adapter(base, root / f"lora-{name}", seed, args.rank)
                for name, seed in (("one", 1), ("two", 2))}
    merged = {name: make_merged(base, folder, root / f"merged-{name}") for name, folder in adapters.items()}

    manager = LLMManager(config_path=False, preload=False)
    manager.register("base", source=str(base))
    for name, folder in adapters.items():
        manager.register(name, base="base", adapter=str(folder))
    greedy = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": args.tokens}
    ours = lambda name: manager.generate(name, PROMPT, raw=True, **greedy).completion_tokens
    copies = MergedCopies(merged, args.tokens)
    for name in ("one", "two"):  # warm both paths: first imports, the base and both adapters resident
        ours(name)
        copies.switch_to(name)
        copies.generate()

    figures: dict[str, list[float]] = {"manager": [], "merged": [], "manager_same": [], "generate_only": []}
    tokens: dict[str, list[int]] = {"manager": [], "merged": []}
    for index in range(args.switches):
        name = ("one", "two")[index % 2]
        runs = [("manager", partial(ours, name)), ("merged", partial(copies.reload_and_generate, name))]
        for label, run in runs if index % 2 else runs[::-1]:
            seconds, made = timed(run)
            figures[label].append(seconds)
            tokens[label].append(made)
        figures["manager_same"].append(timed(partial(ours, name))[0])  # the same adapter again: no switch
        figures["generate_only"].append(timed(copies.generate)[0])

    rows = {row.id: row for row in manager.status()}
    manager_bytes = sum(rows[name].actual_bytes or 0 for name in ("base", "one", "two"))
    merged_bytes = 2 * copies.bytes()
    active = lease_figures(manager, base, adapters["one"], root, args)
    manager.close()
    summary = {name: quartiles(values) for name, values in figures.items()}
    return {
        "seconds_per_switch": summary,
        "ratio_merged_over_manager": statistics.median(b / a for a, b in zip(figures["manager"], figures["merged"])),
        "switch_overhead_seconds": {  # per round: the switching run minus the same request without a switch
            "manager": statistics.median(a - b for a, b in zip(figures["manager"], figures["manager_same"])),
            "merged": statistics.median(a - b for a, b in zip(figures["merged"], figures["generate_only"]))},
        "tokens_per_generation": {label: statistics.median(made) for label, made in tokens.items()},
        "active_adapter": active,
        "memory_bytes": {"manager_base_plus_adapters": manager_bytes, "two_merged_copies": merged_bytes,
                         "base": rows["base"].actual_bytes, "adapter_one": rows["one"].actual_bytes,
                         "adapter_two": rows["two"].actual_bytes},
        "conditions": {"device": "cpu", "cpu": platform.processor() or platform.machine(),
                       "torch_threads": torch.get_num_threads(), "cores": os.cpu_count(),
                       "parameters": sum(p.numel() for p in copies.model.parameters()),
                       "lora_rank": args.rank, "lora_targets": list(TARGETS), "switches": args.switches,
                       "max_new_tokens": args.tokens, "python": platform.python_version(),
                       "torch": torch.__version__, "transformers": __import__("transformers").__version__,
                       "peft": __import__("peft").__version__},
    }


def report(figures: dict[str, Any]) -> str:
    mib = 2**20
    s, memory, conditions = figures["seconds_per_switch"], figures["memory_bytes"], figures["conditions"]
    line = lambda name: (f"{s[name]['median']:.3f} s (quartiles {s[name]['q1']:.3f}-{s[name]['q3']:.3f})")
    return "\n".join([
        (f"conditions: {conditions['cpu']}, {conditions['torch_threads']} torch threads of {conditions['cores']} "
        f"cores, {conditions['parameters'] / 1e6:.1f} M parameters (float32), LoRA rank {conditions['lora_rank']} "
        f"on {len(conditions['lora_targets'])} projections, {conditions['max_new_tokens']} greedy tokens, "
        f"{conditions['switches']} switches"),
        f"(a) manager, switch adapter + generate:        {line('manager')}",
        f"(b) reload merged copy + generate:             {line('merged')}",
        f"    manager, same adapter again (no switch):   {line('manager_same')}",
        f"    generate alone on a loaded merged copy:    {line('generate_only')}",
        (f"ratio (b)/(a), median of per-round ratios: {figures['ratio_merged_over_manager']:.1f}x; switch cost "
        "beyond generating (median per round): manager "
        f"{figures['switch_overhead_seconds']['manager'] * 1000:.0f} ms, merged copy "
        f"{figures['switch_overhead_seconds']['merged'] * 1000:.0f} ms"),
        (f"memory: base + two adapters {memory['manager_base_plus_adapters'] / mib:.1f} MiB (base "
        f"{memory['base'] / mib:.1f}, adapters {memory['adapter_one'] / mib:.1f} + {memory['adapter_two'] / mib:.1f})"
        f" vs two merged copies {memory['two_merged_copies'] / mib:.1f} MiB "
        f"({memory['two_merged_copies'] / memory['manager_base_plus_adapters']:.2f}x)"),
        active_report(figures["active_adapter"], conditions["max_new_tokens"]),
    ])


def active_report(active: dict[str, Any], tokens: int) -> str:
    leases, ratios = active["lease_us"], active["generation_ratios"]
    worst = max(leases["base"]["median"], leases["one"]["median"])
    line = lambda model_id, what: (f"    {what:<45}{leases[model_id]['median']:6.1f} µs (quartiles "
                                   f"{leases[model_id]['q1']:.1f}-{leases[model_id]['q3']:.1f})")
    return "\n".join([
        "requests on the active adapter (nothing to switch):",
        line("plain", "use() on a plain model:"),
        line("base", "use() on the base, with two adapters on it:"),
        line("one", "use() on the active adapter:"),
        (f"    {tokens} greedy tokens on the active adapter (1 torch thread), manager / PEFT: median {statistics.median(ratios):.3f} "
         f"(min {ratios[0]:.3f}, max {ratios[-1]:.3f}, {len(ratios)} alternated pairs)"),
        f"the slower lease {'meets' if worst <= LEASE_GOAL_US else 'misses'} the goal of at most {LEASE_GOAL_US:.0f} µs",
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--switches", type=int, default=8, help="switches timed on each path")
    parser.add_argument("--tokens", type=int, default=16, help="greedy tokens generated after each switch")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank of both adapters")
    parser.add_argument("--leases", type=int, default=300, help="use() calls timed on each model")
    parser.add_argument("--quick", action="store_true", help="the short form CI runs: a smaller model, fewer rounds")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    if args.quick:
        args.switches, args.tokens, args.leases = min(args.switches, 2), min(args.tokens, 4), min(args.leases, 100)
    with tempfile.TemporaryDirectory(prefix="jlm-adapters-bench-") as folder:
        figures = measure(args, Path(folder))
    print(report(figures))
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
