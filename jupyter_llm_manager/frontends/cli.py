"""The ``jupyter-llm-manager`` command: check a setup outside a notebook.

- ``list``: the models the kernel's manager knows (the configuration file's and the built-in ``smollm2``);
- ``estimate MODEL``: the memory a model would take, from metadata only;
- ``plan [MODEL ...]``: whether models fit together, loading nothing (exit status 1 when they do not);
- ``cache [--clear] [--clear-corrections]``: the converted copies of GGUF files kept for fast loads, the
  leftovers of interrupted conversions and the estimate corrections learned from past loads, and clearing them;
- ``doctor``: devices, drivers and libraries, and why a GPU is not used when it is not;
- ``quickstart``: run ``notebooks/quickstart.ipynb`` headless and print what it printed;
- ``demo``: a walk through the Python API: real answers from ``smollm2``, eviction on the demo models;
- ``serve [--host H] [--port N]``: an OpenAI-compatible endpoint for other tools (LangChain, LlamaIndex, Jupyter
  AI, the ``openai`` client), on loopback with a token, until Ctrl-C (``docs/serve.md``).
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..support.units import displayable
from .views.table import Table

__all__ = ["main"]

_WIDGET = "application/vnd.jupyter.widget-view+json"


def _say(*texts: object, file: Any = None) -> None:
    """A line on the terminal, without escape sequences a model's name or answer might carry."""
    print(*(displayable(str(text)) for text in texts), file=file or sys.stdout)


def _manager() -> Any:
    """The kernel's manager as configured, without its warm-up: a command never loads a model by itself."""
    from ..manager.kernel import configured_manager

    return configured_manager(preload=False)


def _width() -> int | None:
    """The terminal's width: ``$COLUMNS``, else the terminal's own; ``None`` (no limit) when the output is not one."""
    if os.environ.get("COLUMNS", "").strip().isdigit():
        return max(int(os.environ["COLUMNS"]), 20)
    return shutil.get_terminal_size().columns if sys.stdout.isatty() else None


def _tables(tables: Sequence[Table]) -> None:
    """Tables one after another, each fitted to the terminal's width (names are never cut)."""
    _say("\n\n".join(table.text(_width()) for table in tables))


def _list(args: argparse.Namespace) -> int:
    from ..models.builtin import WITHOUT_CONFIG
    from .views.registry import registry_table

    manager = _manager()
    rows = manager.status()
    where = manager.config_path or f"no configuration file: {WITHOUT_CONFIG}"
    table = registry_table(rows, manager.spec, manager.default_model, caption=f"Models ({where})")
    _tables([table.select("id", "aliases", "backend", "source", "device", "estimate")])
    for row in rows:
        if row.error:
            _say(f"{row.id}: {row.error}")
    return 0


def _plan(args: argparse.Namespace) -> int:
    from .views.plan import plan_tables

    report = _manager().plan(args.models or None)
    _tables(plan_tables(report))
    return 0 if report.fits else 1


def _ps(args: argparse.Namespace) -> int:
    """Every kernel's models on this machine, from the ledger (this command takes no part in it)."""
    from .views.machine import machine_tables

    _tables(machine_tables(_manager().machine(), include_this=False))
    return 0


def _cache(args: argparse.Namespace) -> int:
    from ..backends.transformers.converted import ConvertedCopies
    from ..estimates import corrections
    from ..support.units import format_bytes

    learned = corrections()
    if args.clear or args.clear_corrections:
        _say(f"Forgot the estimate corrections of {learned.clear()} kinds of load ({learned.path})")
        if not args.clear:
            return 0
    copies = ConvertedCopies()
    if args.clear:
        leftovers = copies.remove_stale_partials()
        removed = copies.clear()
        _say(f"Removed {len(removed)} converted copies ({format_bytes(sum(c.bytes for c in removed))}) "
              f"and {len(leftovers)} leftovers of interrupted conversions "
              f"({format_bytes(sum(p.bytes for p in leftovers))}) from {copies.root}")
        return 0
    entries = copies.entries()
    rows = [[Path(c.source).name, c.dtype.replace("|", ", "), format_bytes(c.bytes), _ago(c.last_used),
             str(c.folder)] for c in entries]
    _tables([Table(["GGUF file", "dtype, mode", "size", "last used", "folder"], rows,
                caption=f"Converted copies of GGUF files ({format_bytes(sum(c.bytes for c in entries))} in "
                        f"{copies.root}; clear with: jupyter-llm-manager cache --clear)")])
    _say(f"Estimate corrections learned from past loads: {len(learned.kinds())} kinds of load in {learned.path} "
         "(clear with: jupyter-llm-manager cache --clear-corrections)")
    leftovers = copies.stale_partials()
    if leftovers:
        rows = [[str(p.pid), format_bytes(p.bytes), _ago(p.modified), str(p.path)] for p in leftovers]
        _say()
        _tables([Table(["process (gone)", "size", "last written", "path"], rows,
                    caption=f"Left by interrupted conversions ({format_bytes(sum(p.bytes for p in leftovers))}; "
                            "removed by: jupyter-llm-manager cache --clear, and by the next conversion)")])
    return 0


def _ago(when: float) -> str:
    import time

    from ..support.units import format_duration

    return f"{format_duration(max(time.time() - when, 0))} ago"


def _estimate(args: argparse.Namespace) -> int:
    from .views.estimate import estimate_table

    _tables([estimate_table(args.model, _manager().estimate(args.model))])
    return 0


def _doctor(args: argparse.Namespace) -> int:
    from .doctor import diagnose

    _say(diagnose())
    return 0


def _notebook_path(name: str) -> Path:
    """A bundled notebook: ./notebooks first, then next to the package (editable or installed)."""
    package = Path(__file__).resolve().parents[1]  # jupyter_llm_manager/
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
    _say(f"Running {path} headless ({len(notebook.cells)} cells)...\n")
    kernel, sockets = _kernel_manager()
    client = NotebookClient(notebook, timeout=args.timeout, kernel_name="python3", km=kernel,
                            resources={"metadata": {"path": str(path.parent)}})
    try:
        client.execute()
        failed = False
    except CellExecutionError as error:
        failed = True
        failure = error
    finally:  # a kernel manager we pass in is ours to stop, with its client's channels
        if client.kc is not None:
            client.kc.stop_channels()
        if kernel.has_kernel:
            kernel.shutdown_kernel(now=False)
        if sockets:
            shutil.rmtree(sockets, ignore_errors=True)
    for cell in notebook.cells:
        _print_cell(cell)
    _say(f"Open it in JupyterLab: .venv/bin/pip install jupyterlab && .venv/bin/jupyter lab {path}")
    if failed:
        _say(f"\nThe notebook stopped with an error: {failure}", file=sys.stderr)
        return 1
    return 0


def _kernel_manager() -> tuple[Any, str | None]:
    """A kernel on local sockets (IPC) where the platform has them.

    Over TCP, ipykernel 7 warns on stderr that the traffic is not encrypted;
    a headless run on this machine has no reason to open ports at all.
    """
    import tempfile

    from jupyter_client.manager import KernelManager

    if os.name != "posix":
        return KernelManager(kernel_name="python3"), None
    sockets = tempfile.mkdtemp(prefix="jupyter-llm-manager-")  # the kernel runs in the notebook's folder
    return KernelManager(kernel_name="python3", transport="ipc", ip=os.path.join(sockets, "kernel")), sockets


def _print_cell(cell: Any) -> None:
    if cell.cell_type == "markdown":
        title = next((line for line in cell.source.splitlines() if line.startswith("#")), "")
        if title:
            _say(f"\n{title}\n")
        return
    if cell.cell_type != "code":
        return
    _say("In  │ " + cell.source.replace("\n", "\n    │ "))
    for output in cell.get("outputs", []):
        text = _output_text(output)
        if text.strip():
            _say("Out │ " + text.rstrip().replace("\n", "\n    │ "))
    _say()


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
    from .. import LLMManager
    from ..models.builtin import BUILTIN_ID, builtin_spec
    from ..models.demo import register_demo_models

    manager = LLMManager(max_loaded_models=1, keep_alive="10m", config_path=False, preload=False)
    manager.subscribe(lambda event: _say(f"    event: {event}"))
    manager.register(BUILTIN_ID, **builtin_spec().to_mapping(), builtin=True)
    manager.alias("chat", BUILTIN_ID)
    question = "What is the capital of Japan?"
    _say(f"\n>>> manager.generate('chat', {question!r}, do_sample=False)   (chat is an alias of smollm2)")
    result = manager.generate("chat", question, do_sample=False, max_new_tokens=40)
    _say(f"{result.text!r}\n{result.summary_str}")
    _say("\n>>> for piece in manager.stream('smollm2', 'Name three primary colors.'): ...   (the same instance)")
    _say(repr("".join(manager.stream(BUILTIN_ID, "Name three primary colors.", do_sample=False,
                                      max_new_tokens=40))))
    _say("\nRegistering two random-weight demo models (built once into the cache, offline) to show eviction;")
    _say("their answers are noise, so only what the manager does is shown.")
    register_demo_models(manager)
    _say("\n>>> manager.load('demo-small')   (max_loaded_models=1 evicts smollm2)")
    manager.load("demo-small")
    _say("\n>>> manager.status()")
    for row in manager.status():
        _say(f"  {row.id:<11} {row.state_str:<20} {row.device:<6} estimate {row.estimated_str:>9}  "
              f"actual {row.actual_str or '-':>9}  aliases {', '.join(row.aliases) or '-'}")
    _say("\n>>> manager.estimate('smollm2')")
    _say(f"  {manager.estimate(BUILTIN_ID)}")
    _say("\n>>> manager.devices()")
    for device in manager.devices():
        _say(f"  {device.device:<7} {device.name:<20} total {device.total_str:>9}  free {device.free_str:>9}  "
              f"budget {device.budget_str:>9}  held by models {device.held_str:>9}")
    _say("\n>>> manager.unload('demo-small')")
    _say(f"  {manager.unload('demo-small')}")
    manager.close()
    return 0


def _serve(args: argparse.Namespace) -> int:
    from .. import serve

    def announce(served: Any) -> None:
        _say(f"Serving the OpenAI API at {served.url}")
        _say(f"Token (send as the API key): {served.token}")
        _say(f"Both are in {served.path} (readable only by you) until this stops; stop with Ctrl-C")
        sys.stdout.flush()

    serve(args.host, args.port, announce=announce)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jupyter-llm-manager",
                                     description="Check a jupyter_llm_manager setup outside a notebook.")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("list", help="the models the kernel's manager knows").set_defaults(run=_list)
    commands.add_parser("ps", help="every notebook's loaded models on this machine, by device (like nvidia-smi, "
                                   "by model and notebook)").set_defaults(run=_ps)
    estimate = commands.add_parser("estimate", help="memory a model would take, from metadata only")
    estimate.add_argument("model", metavar="MODEL")
    estimate.set_defaults(run=_estimate)
    plan = commands.add_parser("plan", help="would these models fit together? (default: each task's selected "
                                             "option); exit status 1 when they do not")
    plan.add_argument("models", nargs="*", metavar="MODEL")
    plan.set_defaults(run=_plan)
    cache = commands.add_parser("cache", help="the converted copies of GGUF files kept for fast loads")
    cache.add_argument("--clear", action="store_true",
                       help="remove every converted copy and what interrupted conversions left, and forget the "
                            "estimate corrections learned from past loads")
    cache.add_argument("--clear-corrections", action="store_true",
                       help="forget only the estimate corrections learned from past loads")
    cache.set_defaults(run=_cache)
    commands.add_parser("doctor", help="devices, drivers, libraries, and why a GPU is not used").set_defaults(
        run=_doctor)
    quickstart = commands.add_parser("quickstart", help="run notebooks/quickstart.ipynb headless, print its output")
    quickstart.add_argument("--notebook", metavar="PATH", help="another notebook to run")
    quickstart.add_argument("--timeout", type=int, default=600, help="seconds a cell may take (default 600)")
    quickstart.set_defaults(run=_quickstart)
    commands.add_parser("demo", help="walk through the Python API: smollm2's answers, eviction on demo models").set_defaults(
        run=_demo)
    serving = commands.add_parser("serve", help="an OpenAI-compatible endpoint for other tools, with a token, "
                                                "until Ctrl-C")
    serving.add_argument("--host", default="127.0.0.1",
                         help="the address to listen on (default 127.0.0.1: this machine only)")
    serving.add_argument("--port", type=int, default=0, help="the port (default 0: a free one, printed)")
    serving.set_defaults(run=_serve)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    try:
        return args.run(args)
    except Exception as error:  # the CLI's one place to turn our errors into a message and an exit code
        from ..errors import LLMManagerError

        if isinstance(error, LLMManagerError):
            _say(f"error: {error}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
