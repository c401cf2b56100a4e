"""What each ``%llm`` subcommand shows: tables and sentences over the shared actions.

A plain class (the magics class only holds it). Every change goes through
:mod:`~jupyter_llm_manager.actions`, so the line magics, the dashboard and
JupyterLab wait as long and say the same thing.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from typing import TYPE_CHECKING

from IPython.core.error import UsageError
from IPython.display import display

from ...config.secrets import has_credentials, shown_url
from ...config.tasks import option_id
from ...manager.facade import LLMManager
from ...support.units import displayable
from .. import actions
from ..machine_reader import server_root
from ..views.devices import devices_table
from ..views.estimate import estimate_table
from ..views.garbage import garbage_table
from ..views.machine import machine_tables
from ..views.plan import plan_tables, task_table
from ..views.registry import RowCells, registry_table
from ..views.status import status_table
from .arguments import usage
from .chats import ChatSessions

if TYPE_CHECKING:
    from ..dashboard import Dashboard

__all__ = ["LineCommands", "say_notices"]


_REFERENCE = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}")
_KEPT_IN_CELLS = ("a cell is saved with the notebook and shared with it: set an environment variable (in the "
                  "shell that starts Jupyter, or os.environ['MY_KEY'] = ... in a cell you do not keep) and pass")


def _reference(key: str) -> str:
    """``--api-key``: only ``${VAR}``; a key typed into a cell would be saved and shared with the notebook."""
    if not _REFERENCE.fullmatch(key.strip()):
        raise UsageError(f"--api-key takes a reference such as '${{OPENAI_API_KEY}}', not a key: {_KEPT_IN_CELLS} "
                         "--api-key '${MY_KEY}' (where a notebook variable has the same name, IPython puts its "
                         "value into the line: write '${{MY_KEY}}')")
    return key.strip()


def _no_credentials(url: str) -> str:
    """A server URL typed in a cell must not carry a password (``user:key@``), unless as ``${VAR}`` references."""
    if has_credentials(url) and shown_url(url) != url:
        raise UsageError(f"the URL carries credentials (user:key@): {_KEPT_IN_CELLS} --api-key '${{MY_KEY}}' "
                         "with the URL alone")
    return url


def say(text: str) -> None:
    """A plain message in the cell's output (a display, so it lands in the right cell)."""
    display({"text/plain": displayable(str(text))}, raw=True)


def say_notices(manager: LLMManager) -> None:
    """What went wrong in the background (a warm-up load), said once, in the next cell that uses the magics."""
    for notice in manager.warmup.take_notices():
        say(f"Notice: {notice}")


class LineCommands:
    """``%llm COMMAND``: one method per subcommand, named ``command_<name>``."""

    def __init__(self, manager: Callable[[], LLMManager], chats: ChatSessions,
                 set_default: Callable[[str], str]) -> None:
        self._manager = manager
        self.chats = chats
        self._set_default = set_default
        self.dashboard: Dashboard | None = None
        self._listed: RowCells = {}  # the last %llm list's cells: listing again rebuilds only rows that moved

    def run(self, args: argparse.Namespace) -> None:
        say_notices(self._manager())
        getattr(self, f"command_{args.command or 'help'}")(args)

    def command_help(self, args: argparse.Namespace) -> None:
        say(usage())

    def command_list(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        display(registry_table(manager.status(), manager.spec, manager.default_model, kept=self._listed,
                               columns=("id", "aliases", "backend", "source", "device", "state", "pinned",
                                        "generation defaults")))

    def command_status(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        if args.all:
            for table in machine_tables(manager.machine(), root=server_root()):
                display(table)
            return
        display(status_table(manager.status()).select("model", "state", "device", "estimate", "actual", "in use",
                                                      "last use", "keep-alive left", "error"))
        display(devices_table(manager.devices()).select("device", "name", "total", "used", "free", "budget",
                                                        "held by models", "models"))

    def command_load(self, args: argparse.Namespace) -> None:
        say(actions.load(self._manager(), args.model, pin=args.pin))

    def command_unload(self, args: argparse.Namespace) -> None:
        if args.all == bool(args.model):
            raise UsageError("%llm unload needs MODEL or --all (not both)")
        manager = self._manager()
        say(actions.unload_all(manager) if args.all else actions.unload(manager, args.model))

    def command_pin(self, args: argparse.Namespace) -> None:
        say(actions.pin(self._manager(), args.model))

    def command_unpin(self, args: argparse.Namespace) -> None:
        say(actions.unpin(self._manager(), args.model))

    def command_register(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        options = {k: getattr(args, k) for k in ("device", "dtype", "quantization", "model", "gguf_file", "mode",
                                                 "max_context") if getattr(args, k)}
        source, backend, base_url = args.source, args.backend, args.base_url
        if base_url or (source and backend == "openai" and re.match(r"https?://", source)):
            backend, base_url = backend or "openai", base_url or source
            source = None if source == base_url else source
            options["base_url"] = _no_credentials(base_url)
        if args.api_key is not None:
            options["api_key"] = _reference(args.api_key)
        if (args.base is None) != (args.adapter is None):
            raise UsageError("a LoRA adapter needs both --base MODEL and --adapter PATH")
        if args.base is not None:
            options.update(base=args.base, adapter=args.adapter)
        elif not source and not base_url:
            raise UsageError("%llm register needs a SOURCE (a Hub id or a folder), or --base-url URL for a server")
        spec = manager.register(args.id, source=source, backend=backend or (None if args.base else "transformers"),
                                persist=args.persist, overwrite=True, **options)
        where = f"; saved to {manager.config_path}" if args.persist else ""
        on = f", adapter {spec.adapter} on {spec.base}" if spec.base else ""
        say(f"Registered {spec.id!r} ({spec.backend}: {spec.location}{on}){where}.")

    def command_alias(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        manager.alias(args.name, args.model, overwrite=True)
        say(f"{args.name!r} now names {manager.resolve(args.model)!r}.")

    def command_default(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        if args.model is None:
            current = manager.default_model
            say(f"Default model: {current!r}" if current else "No default model.")
            return
        say(self._set_default(args.model))

    def command_estimate(self, args: argparse.Namespace) -> None:
        display(estimate_table(args.model, self._manager().estimate(args.model)))

    def command_config(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        if args.path:
            manager.read_config(args.path)
        path = manager.config_path
        registered = manager.ids()
        where = str(path) if path else ("none: set $JUPYTER_LLM_MANAGER_CONFIG or create "
                                        "~/.jupyter/llm_manager.yaml, or read one with %llm config PATH")
        count = f"{len(registered)} id{'' if len(registered) == 1 else 's'} registered"
        say(f"Configuration file: {where}\n{count}: {', '.join(registered) or '-'}")

    def command_gc(self, args: argparse.Namespace) -> None:
        display(garbage_table(self._manager().collect_garbage()))

    def command_dashboard(self, args: argparse.Namespace) -> None:
        """Show the dashboard: one per manager, shown again (another view of the same widgets) each time."""
        from ..dashboard import Dashboard

        manager = self._manager()
        if self.dashboard is not None and (self.dashboard.closed or self.dashboard.manager is not manager):
            self.close_dashboard()
        if self.dashboard is None:
            self.dashboard = Dashboard(manager)
        display(self.dashboard)

    def close_dashboard(self) -> None:
        if self.dashboard is not None:
            self.dashboard.close()
            self.dashboard = None

    def command_plan(self, args: argparse.Namespace) -> None:
        """Would these models fit together (default: every task's selected option, else the preload models)?"""
        report = self._manager().plan(args.models or None)
        if not args.models:  # say what was checked, as the command that checks it again
            checked = " ".join(m.id for m in report.models)
            say(f"Checked each task's selected option (else the preload models): %llm plan {checked}" if checked else
                "Nothing to check: name the models (%llm plan MODEL ...), choose a task's option "
                "(%llm select TASK OPTION), or mark models preload: true in the configuration file.")
            if not checked:
                return
        for table in plan_tables(report):
            display(table)

    def command_select(self, args: argparse.Namespace) -> None:
        manager = self._manager()
        if args.option:
            manager.select(args.task, args.option)
        task = manager.task(args.task)
        if args.option:
            say(f"{args.task!r} now runs option {args.option!r} ({option_id(args.task, args.option)}); the "
                "previous option is unloaded once idle, unless something else uses it.")
        else:
            display(task_table(task.name, manager.resolve(task.name).partition("/")[2], task.options))

    def command_reset(self, args: argparse.Namespace) -> None:
        forgotten = self.chats.reset(args.chat)
        if args.chat and not forgotten:
            raise UsageError(f"No conversation named {args.chat!r}; known: {', '.join(self.chats.names()) or '-'}")
        say(f"Forgot {len(forgotten)} conversation(s): {', '.join(forgotten) or '-'}.")
