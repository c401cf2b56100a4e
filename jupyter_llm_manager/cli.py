"""The ``jupyter-llm-manager`` command: check a setup outside a notebook.

- ``list``: the models the kernel's manager knows (the configuration file, or the demo models);
- ``estimate MODEL``: the memory a model would take, from metadata only;
- ``doctor``: devices, drivers and libraries, and why a GPU is not used when it is not;
- ``quickstart``: run ``notebooks/quickstart.ipynb`` headless and print what it printed;
- ``demo``: a walk through the Python API on the offline demo models.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

_WIDGET = "application/vnd.jupyter.widget-view+json"


def _list(args: argparse.Namespace) -> int:
    from . import get_manager
    from .tables import Table

    manager = get_manager()
    rows = []
    for row in manager.status():
        spec = manager.spec(row.id)
        rows.append([row.id + (" (default)" if row.id == manager.default_model else ""), ", ".join(row.aliases),
                     row.backend, spec.location, str(spec.device), row.estimated_str])
    where = manager.config_path or "no configuration file: the offline demo models"
    print(Table(["id", "aliases", "backend", "source", "device", "estimate"], rows, caption=f"Models ({where})"))
    return 0


def _estimate(args: argparse.Namespace) -> int:
    from . import get_manager

    estimate = get_manager().estimate(args.model)
    print(f"{args.model}: {estimate.total_str}")
    print(f"  weights   {estimate.weights_str:>10}  {estimate.weights_method}")
    print(f"  KV cache  {estimate.kv_cache_str:>10}  {estimate.kv_cache_method}")
    print(f"  overhead  {estimate.overhead_str:>10}  {estimate.overhead_method}")
    if estimate.parameters:
        print(f"  {estimate.parameters_str}")
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    print(diagnose())
    return 0


def _notebook_path(name: str) -> Path:
    """A bundled notebook: ./notebooks first, then next to the package (editable or installed)."""
    package = Path(__file__).resolve().parent
    for folder in (Path.cwd() / "notebooks", package / "notebooks", package.parent / "notebooks"):
        if (folder / name).exists():
            return folder / name
    raise SystemExit(f"{name} not found in ./notebooks or next to the package; pass --notebook PATH")


def _quickstart(args: argparse.Namespace) -> int:
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError

    path = Path(args.notebook) if args.notebook else _notebook_path("quickstart.ipynb")
    notebook = nbformat.read(path, as_version=4)
    print(f"Running {path} headless ({len(notebook.cells)} cells)...\n")
    client = NotebookClient(notebook, timeout=args.timeout, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
        failed = False
    except CellExecutionError as error:
        failed = True
        failure = error
    for cell in notebook.cells:
        _print_cell(cell)
    print(f"Open it in JupyterLab: .venv/bin/pip install jupyterlab && .venv/bin/jupyter lab {path}")
    if failed:
        print(f"\nThe notebook stopped with an error: {failure}", file=sys.stderr)
        return 1
    return 0


def _print_cell(cell: Any) -> None:
    if cell.cell_type == "markdown":
        title = next((line for line in cell.source.splitlines() if line.startswith("#")), "")
        if title:
            print(f"\n{title}\n")
        return
    if cell.cell_type != "code":
        return
    print("In  │ " + cell.source.replace("\n", "\n    │ "))
    for output in cell.get("outputs", []):
        text = _output_text(output)
        if text.strip():
            print("Out │ " + text.rstrip().replace("\n", "\n    │ "))
    print()


def _output_text(output: Any) -> str:
    if output.output_type == "stream":
        return output.text
    if output.output_type == "error":
        return f"{output.ename}: {output.evalue}"
    data = output.get("data", {})
    if _WIDGET in data:
        return "[an interactive widget: open the notebook in JupyterLab to use it]"
    return data.get("text/plain") or data.get("text/markdown") or ""


def _demo(args: argparse.Namespace) -> int:
    from . import LLMManager
    from .demo import NOISE_NOTE, register_demo_models

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
    print(repr("".join(stream)))
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
    commands.add_parser("list", help="the models the kernel's manager knows").set_defaults(run=_list)
    estimate = commands.add_parser("estimate", help="memory a model would take, from metadata only")
    estimate.add_argument("model", metavar="MODEL")
    estimate.set_defaults(run=_estimate)
    commands.add_parser("doctor", help="devices, drivers, libraries, and why a GPU is not used").set_defaults(
        run=_doctor)
    quickstart = commands.add_parser("quickstart", help="run notebooks/quickstart.ipynb headless, print its output")
    quickstart.add_argument("--notebook", metavar="PATH", help="another notebook to run")
    quickstart.add_argument("--timeout", type=int, default=600, help="seconds a cell may take (default 600)")
    quickstart.set_defaults(run=_quickstart)
    commands.add_parser("demo", help="walk through the Python API on the offline demo models").set_defaults(
        run=_demo)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.run(args)
    except Exception as error:  # the CLI's one place to turn our errors into a message and an exit code
        from .errors import LLMManagerError

        if isinstance(error, LLMManagerError):
            print(f"error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
