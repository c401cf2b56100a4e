"""The ``jupyter-llm-manager`` command: check a setup outside a notebook.

``demo`` walks through the Python API on the built-in demo models, offline.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Sequence

__all__ = ["main"]


def _demo(args: argparse.Namespace) -> int:
    from . import LLMManager
    from .demo import NOISE_NOTE, register_demo_models

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    manager = LLMManager(max_loaded_models=1, keep_alive="10m", config_path=False, preload=False)
    manager.subscribe(lambda event: print(f"    event: {event}"))
    print("Registering the demo models (built once into the cache, offline)...")
    register_demo_models(manager)
    manager.alias("chat", "demo-small")
    print("\n>>> manager.generate('chat', 'Hello', max_new_tokens=20)")
    result = manager.generate("chat", "Hello", max_new_tokens=20)
    print(f"{result.text!r}\n{result.summary_str}")
    print("\n>>> for piece in manager.stream('demo-large', 'Hi'): ...   (max_loaded_models=1 evicts chat)")
    stream = manager.stream("demo-large", [{"role": "user", "content": "Hi"}], max_new_tokens=20)
    print("".join(stream).__repr__())
    print("\n>>> manager.status()")
    for row in manager.status():
        print(f"  {row.id:<11} {row.state_str:<20} {row.device:<6} estimate {row.estimated_str:>9}  "
              f"actual {row.actual_str:>9}  aliases {', '.join(row.aliases) or '-'}")
    print("\n>>> manager.estimate('demo-large')")
    print(f"  {manager.estimate('demo-large')}")
    print("\n>>> manager.devices()")
    for device in manager.devices():
        print(f"  {device.device:<7} {device.name:<20} total {device.total_str:>9}  free {device.free_str:>9}  "
              f"budget {device.budget_str:>9}  held by models {device.held_str:>9}")
    print("\n>>> manager.unload('demo-large')")
    print(f"  {manager.unload('demo-large')}")
    manager.close()
    print(f"\n{NOISE_NOTE}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jupyter-llm-manager",
                                     description="Check a jupyter_llm_manager setup outside a notebook.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("demo", help="walk through the Python API on the offline demo models").set_defaults(
        run=_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
