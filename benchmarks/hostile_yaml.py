"""Reading YAML configuration files: large ones fast, hostile ones refused at a bounded cost.

    python benchmarks/hostile_yaml.py [--models 20000]

- A file of 20,000 models, read and validated into specs (``load_config``)
  and written back (``save_config``), with libyaml's C loader and dumper (what
  the project uses) and with PyYAML's pure-Python ones, in the same run.
- Hostile files: the "billion laughs" alias bomb (9 levels, ~440 bytes, 10^9
  values once expanded) in several places, deep nesting (flow and block),
  a recursive alias, a 20 MB file: each must be refused, and the worst time
  and peak memory are reported.
"""

from __future__ import annotations

import argparse
import itertools
import resource
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from jupyter_llm_manager.config.bounded_yaml import dump_yaml, load_yaml
from jupyter_llm_manager.config.files import load_config, save_config
from jupyter_llm_manager.errors import ConfigurationError

BOMB_LEVELS = "abcdefghi"


def bomb(place: str) -> str:
    """The alias bomb, its anchors under one model's options, referenced from ``place`` of another."""
    lol = ", ".join(['"lol"'] * 9)
    lines = [f"a: &a [{lol}]"]
    for previous, level in itertools.pairwise(BOMB_LEVELS):
        lines.append(f"{level}: &{level} [{', '.join([f'*{previous}'] * 9)}]")
    anchors = "".join(f"      {line}\n" for line in lines)
    source = "" if place == "source" else "    source: org/victim\n"
    return f"models:\n  anchors:\n    source: org/anchors\n    options:\n{anchors}  victim:\n{source}    {place}: *i\n"


HOSTILE = {
    "bomb in source": bomb("source"),
    "bomb in generation": bomb("generation"),
    "bomb in load_kwargs": bomb("load_kwargs"),
    "bomb in options": bomb("options"),
    "flow nesting 10,000 deep": "models: " + "[" * 10_000 + "]" * 10_000 + "\n",
    "block nesting 2,000 deep": "".join(" " * i + "- \n" for i in range(2_000)),
    "recursive alias": "models: &m {a: *m}\n",
    "20 MB file": "# " + "x" * (20 * 1024 * 1024) + "\n",
}


def big_file(count: int) -> str:
    return "models:\n" + "".join(
        f"  model-{i}:\n    source: org/model-{i}\n    dtype: bfloat16\n    max_context: 4096\n"
        f"    generation: {{max_new_tokens: 128, temperature: 0.7}}\n" for i in range(count))


def timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", type=int, default=20_000)
    args = parser.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="llm-yaml-"))
    text = big_file(args.models)
    path = folder / "big.yaml"
    path.write_text(text)
    config = load_config(path)
    data = load_yaml(text)
    print(f"{args.models:,} models, {len(text) / 1e6:.1f} MB")
    c_parse, py_parse = timed(lambda: load_yaml(text)), timed(lambda: load_yaml(text, pure_python=True))
    c_dump, py_dump = timed(lambda: dump_yaml(data)), timed(lambda: dump_yaml(data, pure_python=True))
    print(f"  parse (bounded, duplicate keys checked): C {c_parse:.2f} s, pure Python {py_parse:.2f} s "
          f"({py_parse / c_parse:.1f}x)")
    print(f"  dump: C {c_dump:.2f} s, pure Python {py_dump:.2f} s ({py_dump / c_dump:.1f}x)")
    print(f"  load_config (parse + validate every spec): {timed(lambda: load_config(path)):.2f} s")
    print(f"  save_config (merge, dump, atomic write): "
          f"{timed(lambda: save_config(folder / 'saved.yaml', config.models, {})):.2f} s")
    worst_time, worst_memory, refused = 0.0, 0, 0
    for name, hostile in HOSTILE.items():
        hostile_path = folder / "hostile.yaml"
        hostile_path.write_text(hostile)
        tracemalloc.start()
        started = time.perf_counter()
        try:
            load_config(hostile_path)
            outcome = "ACCEPTED"
        except ConfigurationError as error:
            outcome = f"refused: {str(error)[len(str(hostile_path)) + 2:][:90]}"
            refused += 1
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        worst_time, worst_memory = max(worst_time, seconds), max(worst_memory, peak)
        print(f"  {name:<27} {seconds * 1000:7.1f} ms  peak {peak / 1e6:6.1f} MB  {outcome}")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"hostile files: {refused}/{len(HOSTILE)} refused, worst {worst_time * 1000:.0f} ms, "
          f"peak traced memory {worst_memory / 1e6:.1f} MB (process peak RSS {rss:.0f} MB, the 20,000-model file "
          "included)")
    return 0 if refused == len(HOSTILE) else 1


if __name__ == "__main__":
    sys.exit(main())
