"""llama.cpp answers through the manager against raw ``Llama``: repeated prompts, distinct prompts, a conversation.

    python benchmarks/llama_reuse.py [--rounds 16] [--tokens 64] [--turns 10] [--chats 2] [--threads 1] [--quick]

The real SmolLM2 file, loaded twice in this process: by the manager and by
raw ``llama_cpp.Llama``, with the same ``n_ctx`` and the same thread count
(``load_kwargs: {n_threads: N}`` on the manager's side), greedy with the
repetition penalty off on both sides, so both make the same tokens. Each
keeps its own KV cache from request to request (raw llama-cpp-python reuses
the longest cached prefix; the manager reuses whole batches of a plan that
keeps its answers independent of the request before). Alternated pairs
(A, B, B, A, ...):

- repeated: the same prompt every time;
- distinct: a different question every time (they share the system message);
- ``--chats`` conversations of ``--turns`` turns: the manager's
  ``generate`` on the messages so far against raw ``create_chat_completion``
  on the same messages (the manager's answer appended to the history).

Prints tokens per second (the answer's tokens over the request's time,
prompt included), with min / median / max of the per-pair ratios, and the
same ratios in CPU time (at 1 thread, the work itself, which the other
processes of a busy machine do not blur). Goals: at least 0.98x raw's
tokens per second; no slower per turn than raw. ``--threads`` (default 1)
is the count on both sides: on a machine that other work keeps busy, one
thread keeps llama.cpp's threads from stalling on one another, which would
drown both sides' figures in noise. ``--quick`` is the short form CI runs.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.backends.llama_cpp.options import core_budget
from jupyter_llm_manager.models.builtin import INSTALL_HINT, smollm2_file

CONTEXT = 2048
SPEED_GOAL = 0.98
QUESTIONS = ["What is the capital of France?", "Name three rivers in Africa.", "Why do cats purr?",
             "How does a lighthouse work?", "Write a haiku about snow.", "What is a prime number?",
             "Give me a tip for learning to cook.", "Why is the sea salty?", "What do bees make?",
             "Explain what a volcano is.", "How far is the moon?", "What is chess?"]
FOLLOW_UPS = ["Tell me more.", "Why?", "Can you give an example?", "What else should I know?", "Summarize that.",
              "Is that always true?", "How would a child say it?", "And in one sentence?",
              "What is surprising about it?", "Thanks, anything to add?"]


class Sides:
    """The same file through the manager and through raw ``Llama``, the same context and threads."""

    def __init__(self, path: Path, threads: int, tokens: int) -> None:
        import llama_cpp

        self.tokens = tokens
        self.manager = LLMManager(config_path=False, preload=False, cooperate=False)
        self.manager.register("cpp", source=str(path), backend="llama_cpp", max_context=CONTEXT,
                              load_kwargs={"n_threads": threads, "n_threads_batch": threads})
        self.manager.load("cpp")
        self.raw = llama_cpp.Llama(model_path=str(path), n_ctx=CONTEXT, n_threads=threads, n_threads_batch=threads,
                                   verbose=False)

    def ours(self, prompt: Any) -> tuple[str, int]:
        result = self.manager.generate("cpp", prompt, max_new_tokens=self.tokens, temperature=0,
                                       repetition_penalty=1.0)
        return result.text, result.completion_tokens

    def theirs(self, prompt: Any) -> tuple[str, int]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt
        answer = self.raw.create_chat_completion(messages, max_tokens=self.tokens, temperature=0, repeat_penalty=1.0)
        return answer["choices"][0]["message"]["content"] or "", answer["usage"]["completion_tokens"]

    def close(self) -> None:
        self.manager.close()
        self.raw.close()


def timed(action: Any, prompt: Any) -> tuple[float, float, str, int]:
    """Wall and CPU seconds of one request, its answer and its tokens."""
    cpu, started = time.process_time(), time.perf_counter()
    text, tokens = action(prompt)
    return time.perf_counter() - started, time.process_time() - cpu, text, tokens


def pairs(sides: Sides, prompts: list[Any]) -> dict[str, list[float]]:
    """tok/s of each side per prompt, alternated; whether both answered alike."""
    figures: dict[str, list[float]] = {"manager": [], "raw": [], "manager cpu": [], "raw cpu": [], "same answer": []}
    for index, prompt in enumerate(prompts):
        answers = {}
        for label, action in ((("manager", sides.ours), ("raw", sides.theirs)) if index % 4 in (0, 3)
                              else (("raw", sides.theirs), ("manager", sides.ours))):
            seconds, cpu, text, tokens = timed(action, prompt)
            figures[label].append(tokens / seconds)
            figures[f"{label} cpu"].append(tokens / cpu)
            answers[label] = text
        figures["same answer"].append(float(answers["manager"].strip() == answers["raw"].strip()))
    return figures


def conversations(sides: Sides, count: int, turns: int) -> dict[str, list[float]]:
    """tok/s of each side per turn of ``count`` conversations, both on the same growing history (the manager's
    answers: raw's own may differ by a token where its cache reuse rounds otherwise, and then it pays for it)."""
    figures: dict[str, list[float]] = {"manager": [], "raw": [], "manager cpu": [], "raw cpu": [], "same answer": []}
    for number in range(count):
        history: list[dict[str, str]] = []
        for index in range(turns):
            history.append({"role": "user", "content": QUESTIONS[-1 - number % len(QUESTIONS)] if index == 0
                            else FOLLOW_UPS[index % len(FOLLOW_UPS)]})
            answers = {}
            for label, action in ((("manager", sides.ours), ("raw", sides.theirs)) if index % 4 in (0, 3)
                                  else (("raw", sides.theirs), ("manager", sides.ours))):
                seconds, cpu, text, tokens = timed(action, list(history))
                figures[label].append(tokens / seconds)
                figures[f"{label} cpu"].append(tokens / cpu)
                answers[label] = text
            figures["same answer"].append(float(answers["manager"].strip() == answers["raw"].strip()))
            history.append({"role": "assistant", "content": answers["manager"]})
    return figures


def spread(values: list[float], digits: int = 2) -> str:
    return f"{statistics.median(values):.{digits}f} (min {min(values):.{digits}f}, max {max(values):.{digits}f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=16, help="pairs for repeated and for distinct prompts")
    parser.add_argument("--tokens", type=int, default=64, help="greedy tokens per answer (at most)")
    parser.add_argument("--turns", type=int, default=10, help="turns of each conversation")
    parser.add_argument("--chats", type=int, default=2, help="conversations")
    parser.add_argument("--threads", type=int, default=1, help="threads on both sides")
    parser.add_argument("--quick", action="store_true", help="the short form CI runs")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args()
    if args.quick:
        args.rounds, args.tokens, args.turns, args.chats = (min(args.rounds, 2), min(args.tokens, 16),
                                                            min(args.turns, 3), 1)
    path = smollm2_file()
    if path is None:
        print(f"the SmolLM2 file is not installed: {INSTALL_HINT}", file=sys.stderr)
        return 1
    threads = max(1, min(args.threads, core_budget()))
    load_before = os.getloadavg()
    sides = Sides(path, threads, args.tokens)
    try:
        sides.ours("Hi")  # first requests build the chat template on both sides: not part of the figures
        sides.theirs("Hi")
        results = {"repeated": pairs(sides, [QUESTIONS[0]] * args.rounds),
                   "distinct": pairs(sides, [QUESTIONS[i % len(QUESTIONS)] for i in range(1, args.rounds + 1)]),
                   "conversation": conversations(sides, args.chats, args.turns)}
    finally:
        sides.close()
    print(f"SmolLM2-135M-Instruct Q4_1, n_ctx {CONTEXT}, {threads} threads on both sides, up to {args.tokens} greedy "
          f"tokens; load average {', '.join(f'{x:.2f}' for x in load_before)} at the start, "
          f"{', '.join(f'{x:.2f}' for x in os.getloadavg())} at the end\n")
    print("| prompts | manager | raw `Llama` | manager / raw, per pair | the same in CPU time | same answers |\n"
          "|---|---|---|---|---|---|")
    verdicts = []
    for name, label in (("repeated", "repeated"), ("distinct", "distinct"),
                        ("conversation", f"{args.chats} conversations of {args.turns} turns")):
        figures = results[name]
        ratio = [a / b for a, b in zip(figures["manager"], figures["raw"])]
        work = [a / b for a, b in zip(figures["manager cpu"], figures["raw cpu"])]
        goal = 1.0 if name == "conversation" else SPEED_GOAL
        verdicts.append(f"{name}: the median ratio {'meets' if statistics.median(ratio) >= goal else 'misses'} the "
                        f"goal of at least {goal}x raw's tokens per second")
        print(f"| {label} ({len(ratio)} pairs) | {statistics.median(figures['manager']):.1f} tok/s | "
              f"{statistics.median(figures['raw']):.1f} tok/s | {spread(ratio)} | {spread(work)} | "
              f"{int(sum(figures['same answer']))}/{len(ratio)} |")
    print("\n" + "\n".join(verdicts))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
