"""``%%llm`` and ``%llm``: the notebook front-end over the manager. No policy here.

``%load_ext jupyter_llm_manager`` registers them; ``%unload_ext`` removes
them; ``%reload_ext`` keeps the loaded models (the manager is the kernel-wide
singleton) and the chat histories. ``%%llm?`` and ``%llm help`` print the
usage generated from the argument parsers below.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import threading
import time
from typing import Any, Iterator

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.display import display
from IPython.utils.process import arg_split
from traitlets import Bool, Enum, Float, Unicode

from .chats import ChatSessions
from .demo import NOISE_NOTE, is_demo
from .errors import LLMManagerError
from .events import Event
from .interpolate import interpolate
from .manager import LLMManager, get_manager
from .rendering import FORMATS, AnswerView, RichAnswerView, TextAnswerView, extract_code
from .tables import Table
from .units import format_bytes

__all__ = ["LLMMagics", "load_ipython_extension", "unload_ipython_extension"]

#: Conversations survive %reload_ext, like the models.
_CHATS = ChatSessions()
_MODEL_COMMANDS = {"load", "unload", "pin", "unpin", "estimate", "default", "alias"}


class _HelpFormatter(argparse.HelpFormatter):
    """Plain argparse help, 100 columns wide (IPython's formatter adds a Sphinx block and a '%')."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100, max_help_position=30)


def _cell_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(
        prog="%%llm", formatter_class=_HelpFormatter, description="Send the cell to one or more models and stream the answer into the output. "
        "{name} and {name[index]} are replaced by notebook values; {{text}} is a literal {text}; any other "
        "braces are sent as written.")
    parser.add_argument("model", nargs="*", metavar="MODEL",
                        help="model ids or aliases; none: the default model. Several: the same prompt to each, "
                             "side by side")
    parser.add_argument("-o", "--output", metavar="VAR",
                        help="store the answer text in VAR (a dict id -> text for several models)")
    parser.add_argument("-f", "--format", choices=FORMATS, default=None,
                        help="how to render the answer (default markdown); code puts it in a new cell below")
    parser.add_argument("-n", "--max-new-tokens", type=int, metavar="N", help="at most N new tokens")
    parser.add_argument("-t", "--temperature", type=float, metavar="T", help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling probability")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed, for a repeatable sample")
    parser.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    parser.add_argument("--chat", metavar="NAME", help="continue the conversation NAME (%%llm reset NAME clears it)")
    parser.add_argument("--raw", action="store_true", help="send the text as is, without the chat template")
    parser.add_argument("--no-stream", action="store_true", help="show the answer once it is complete")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="any other generation parameter, e.g. -p top_k=40 -p repetition_penalty=1.1")
    return parser


def _line_parser() -> MagicArgumentParser:
    parser = MagicArgumentParser(prog="%llm", formatter_class=_HelpFormatter,
                                 description="Manage the models of this kernel.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> MagicArgumentParser:
        return commands.add_parser(name, help=help_text.replace("%", "%%"), description=help_text,
                                   formatter_class=_HelpFormatter)

    command("list", "registered models and aliases")
    command("status", "state, device, memory estimate and actual, last use and keep-alive left; devices")
    load = command("load", "load a model now")
    load.add_argument("model", metavar="MODEL")
    load.add_argument("--pin", action="store_true", help="also pin it (never evicted)")
    unload = command("unload", "unload a model (or all) and free its memory")
    unload.add_argument("model", nargs="?", metavar="MODEL")
    unload.add_argument("--all", action="store_true", help="unload every model")
    for name, text in (("pin", "never evict MODEL"), ("unpin", "let MODEL be evicted again"),
                       ("estimate", "memory MODEL would take, from metadata only")):
        command(name, text).add_argument("model", metavar="MODEL")
    register = command("register", "register a model (loads nothing)")
    register.add_argument("id", metavar="ID")
    register.add_argument("source", metavar="SOURCE", help="a Hub id or a local folder")
    register.add_argument("--backend", default="transformers", help="transformers (default) or openai")
    register.add_argument("--device", help="auto, cpu, cuda, cuda:N, balanced")
    register.add_argument("--dtype", help="auto, float32, float16, bfloat16")
    register.add_argument("--quantization", help="4bit or 8bit")
    register.add_argument("--persist", action="store_true", help="also save it to the configuration file")
    alias = command("alias", "give MODEL another name (the same loaded instance)")
    alias.add_argument("name", metavar="NAME")
    alias.add_argument("model", metavar="TARGET")
    default = command("default", "set (or show) the model %%llm uses when none is named")
    default.add_argument("model", nargs="?", metavar="MODEL")
    config = command("config", "show the configuration file in use, or read PATH into the manager")
    config.add_argument("path", nargs="?", metavar="PATH")
    command("gc", "collect garbage and empty the CUDA cache without unloading; report what still holds models")
    reset = command("reset", "forget a --chat conversation (all when no name is given)")
    reset.add_argument("chat", nargs="?", metavar="CHAT")
    command("dashboard", "open the models dashboard (devices, models, actions, events)")
    command("help", "show this help")
    return parser


_CELL_PARSER = _cell_parser()
_LINE_PARSER = _line_parser()


def usage() -> str:
    """The full usage of ``%%llm`` and ``%llm``, from the parsers."""
    subcommands = [action for action in _LINE_PARSER._actions if action.dest == "command"][0]
    parts = [_CELL_PARSER.format_help(), _LINE_PARSER.format_help()]
    parts += [parser.format_help() for parser in subcommands.choices.values() if parser._actions]
    return "\n".join(parts)


def _parse(parser: MagicArgumentParser, line: str) -> Any:
    """Split like a shell (quotes group words and are removed), then parse; errors are UsageError."""
    return parser.parse_args(arg_split(line, posix=True, strict=False))


def _parse_value(text: str) -> Any:
    """``-p`` values: Python literals (``40``, ``1.1``, ``true``, ``['###']``), else the text."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def _say(text: str) -> None:
    """A plain message in the cell's output (a display, so it lands in the right cell)."""
    display({"text/plain": str(text)}, raw=True)


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A user's mistake is one line (UsageError), not a traceback."""
    try:
        yield
    except LLMManagerError as error:
        raise UsageError(str(error)) from None


@magics_class
class LLMMagics(Magics):
    """The ``%%llm`` cell magic and the ``%llm`` line magics."""

    default_model = Unicode(None, allow_none=True,
                            help="Model for %%llm when none is named (else the config file's default).").tag(config=True)
    default_format = Enum(FORMATS, "markdown", help="How %%llm renders answers by default.").tag(config=True)
    stream_interval = Float(0.1, help="Seconds between display updates while streaming.").tag(config=True)
    show_footer = Bool(True, help="Show loading, evictions and tokens per second below answers.").tag(config=True)
    plain_text = Bool(None, allow_none=True,
                      help="Write plain text instead of rich displays (default: only in a terminal).").tag(config=True)

    def __init__(self, shell: Any = None, manager: LLMManager | None = None, **kwargs: Any) -> None:
        super().__init__(shell=shell, **kwargs)
        self._manager = manager
        self.chats = _CHATS
        self._dashboards: list[Any] = []
        self._noted_demos: set[str] = set()

    @property
    def manager(self) -> LLMManager:
        if self._manager is None:
            self._manager = get_manager()
        return self._manager

    @manager.setter
    def manager(self, value: LLMManager) -> None:
        self._manager = value

    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> None:
        with _user_errors():
            if cell is None:
                self._line(line)
            else:
                self._cell(line, cell)

    llm.__doc__ = usage()

    # -- the cell magic --------------------------------------------------------------

    def _cell(self, line: str, cell: str) -> None:
        args = _parse(_CELL_PARSER, line)
        models = args.model or [self._default_model()]
        fmt = args.format or self.default_format
        if args.chat and len(models) > 1:
            raise UsageError("--chat continues one conversation: name one model")
        if args.chat and args.raw:
            raise UsageError("--chat sends the conversation through the chat template; drop --raw")
        if fmt == "code" and len(models) > 1:
            raise UsageError("-f code puts one answer in a new cell: name one model")
        for model_id in models:
            self.manager.resolve(model_id)  # an unknown id fails before anything runs
        text = interpolate(cell.lstrip("\n").rstrip(), self.shell.user_ns)
        params = self._params(args)
        answers = self._ask_each(models, text, args, params, fmt)
        if args.output:
            self.shell.user_ns[args.output] = answers if len(models) > 1 else answers[models[0]]
        if fmt == "code" and answers.get(models[0]):
            self.shell.set_next_input(extract_code(answers[models[0]]), replace=False)

    def _ask_each(self, models: list[str], text: str, args: Any, params: dict[str, Any],
                  fmt: str) -> dict[str, str]:
        view = self._view(models, fmt)
        watcher = self._watch_events(view)
        answers: dict[str, str] = {}
        try:
            for model_id in models:
                answers[model_id] = self._ask(model_id, text, args, params, view)
        finally:
            watcher()
            view.close()
        return answers

    def _ask(self, model_id: str, text: str, args: Any, params: dict[str, Any], view: AnswerView) -> str:
        canonical = self.manager.resolve(model_id)
        if is_demo(canonical) and canonical not in self._noted_demos:  # said once per session
            self._noted_demos.add(canonical)
            view.notice(NOISE_NOTE)
        prompt: Any = self.chats.messages(args.chat, text, args.system) if args.chat else text
        system = None if args.chat else args.system
        if args.no_stream:
            try:
                result = self.manager.generate(model_id, prompt, system=system, raw=args.raw, **params)
            except LLMManagerError as error:
                view.finish(model_id, None, error=f"failed: {error}")
                raise
            view.finish(model_id, result)
        else:
            stream = self.manager.stream(model_id, prompt, system=system, raw=args.raw, **params)
            try:
                for piece in stream:
                    view.add(model_id, piece)
            except KeyboardInterrupt:
                stream.close()
                view.finish(model_id, stream.result)
                raise
            except LLMManagerError as error:
                view.finish(model_id, None, error=f"failed: {error}")
                raise
            finally:
                stream.close()
            result = stream.result
            view.finish(model_id, result)
        if args.chat and result.finish_reason != "interrupted":
            self.chats.record(args.chat, prompt, result.text)
        return result.text

    def _view(self, models: list[str], fmt: str) -> AnswerView:
        plain = self.plain_text
        if plain is None:
            plain = type(self.shell).__name__ == "TerminalInteractiveShell"
        view_class = TextAnswerView if plain else RichAnswerView
        return view_class(models, fmt, interval=self.stream_interval, footer=self.show_footer)

    def _watch_events(self, view: AnswerView) -> Any:
        """Show loads and evictions caused by this cell in its status line."""
        cell_thread = threading.current_thread()

        def on_event(event: Event) -> None:
            if threading.current_thread() is not cell_thread:
                return
            if event.kind == "loading":
                view.status(f"loading {event.model_id}…")
            elif event.kind == "loaded":
                seconds = f"{event.seconds:.2f}" if event.seconds < 1 else f"{event.seconds:.1f}"
                view.status(f"loaded {event.model_id} in {seconds} s ({event.bytes_str})")
            elif event.kind == "evicted":
                view.status(f"evicted {event.model_id} ({event.reason}, {event.bytes_str} freed)")
            elif event.kind == "warning":
                view.status(event.message)

        return self.manager.subscribe(on_event)

    def _params(self, args: Any) -> dict[str, Any]:
        params: dict[str, Any] = {}
        for name in ("max_new_tokens", "temperature", "top_p", "seed"):
            if getattr(args, name) is not None:
                params[name] = getattr(args, name)
        for item in args.param:
            key, equals, value = item.partition("=")
            if not equals or not key.strip().isidentifier():
                raise UsageError(f"-p expects KEY=VALUE, got {item!r}")
            params[key.strip()] = _parse_value(value.strip())
        return params

    def _default_model(self) -> str:
        chosen = self.default_model or self.manager.default_model
        if chosen:
            return chosen
        ids = [row.id for row in self.manager.status()]
        if len(ids) == 1:
            return ids[0]
        raise UsageError("No model named and no default: write %%llm MODEL, or set one with %llm default MODEL"
                         + (f" (registered: {', '.join(ids)})" if ids else " after %llm register ID SOURCE"))

    # -- the line magics ---------------------------------------------------------------

    def _line(self, line: str) -> None:
        args = _parse(_LINE_PARSER, line)
        command = args.command or "help"
        getattr(self, f"_command_{command}")(args)

    def _command_help(self, args: Any) -> None:
        _say(usage())

    def _command_list(self, args: Any) -> None:
        rows = []
        default = self.default_model or self.manager.default_model
        for row in self.manager.status():
            spec = self.manager.spec(row.id)
            rows.append([row.id + (" (default)" if row.id == default else ""), ", ".join(row.aliases),
                         row.backend, spec.source or spec.base_url or "", str(spec.device), row.state,
                         "yes" if row.pinned else ""])
        display(Table(["id", "aliases", "backend", "source", "device", "state", "pinned"], rows,
                      caption="Registered models"))

    def _command_status(self, args: Any) -> None:
        now = time.time()
        rows = [[row.id + (f" ({', '.join(row.aliases)})" if row.aliases else ""), row.state_str, row.device,
                 row.estimated_str, row.actual_str, str(row.in_use or ""), row.last_used_str(now),
                 row.expires_in_str(now), row.error or ""] for row in self.manager.status()]
        display(Table(["model", "state", "device", "estimate", "actual", "in use", "last use", "keep-alive left",
                       "error"], rows, caption="Models"))
        devices = [[d.device, d.name, d.total_str, d.used_str, d.free_str, d.budget_str, d.held_str,
                    ", ".join(d.models)] for d in self.manager.devices()]
        display(Table(["device", "name", "total", "used", "free", "budget", "held by models", "models"], devices,
                      caption="Devices"))

    def _command_load(self, args: Any) -> None:
        if self.manager.row(args.model).state == "loaded":
            if args.pin:
                self.manager.pin(args.model)
            _say(f"{self.manager.resolve(args.model)!r} is already loaded" + (", now pinned." if args.pin else "."))
            return
        handle = self.manager.load(args.model, pin=args.pin)
        row = handle.status()
        seconds = f" in {row.load_seconds:.1f} s" if row.load_seconds is not None else ""
        _say(f"Loaded {row.id!r} on {row.device}{seconds} ({row.actual_str or 'remote'})"
              + (", pinned" if row.pinned else ""))

    def _command_unload(self, args: Any) -> None:
        if args.all == bool(args.model):
            raise UsageError("%llm unload needs MODEL or --all (not both)")
        reports = self.manager.unload_all() if args.all else [self.manager.unload(args.model)]
        reports = [r for r in reports if r is not None]
        for report in reports:
            _say(report)
        if not reports:
            _say("Nothing was loaded.")

    def _command_pin(self, args: Any) -> None:
        self.manager.pin(args.model)
        _say(f"Pinned {args.model!r}: it will not be evicted.")

    def _command_unpin(self, args: Any) -> None:
        self.manager.unpin(args.model)
        _say(f"Unpinned {args.model!r}.")

    def _command_register(self, args: Any) -> None:
        options = {k: getattr(args, k) for k in ("device", "dtype", "quantization") if getattr(args, k)}
        spec = self.manager.register(args.id, source=args.source, backend=args.backend, persist=args.persist,
                                     overwrite=True, **options)
        where = f"; saved to {self.manager.config_path}" if args.persist else ""
        _say(f"Registered {spec.id!r} ({spec.backend}: {spec.source}){where}.")

    def _command_alias(self, args: Any) -> None:
        self.manager.alias(args.name, args.model, overwrite=True)
        _say(f"{args.name!r} now names {self.manager.resolve(args.model)!r}.")

    def _command_default(self, args: Any) -> None:
        if args.model is None:
            current = self.default_model or self.manager.default_model
            _say(f"Default model: {current!r}" if current else "No default model.")
            return
        self.manager.resolve(args.model)
        self.default_model = self.manager.default_model = args.model
        _say(f"%%llm without a model now uses {args.model!r}.")

    def _command_estimate(self, args: Any) -> None:
        estimate = self.manager.estimate(args.model)
        rows = [["weights", estimate.weights_str, estimate.weights_method],
                ["KV cache", estimate.kv_cache_str, estimate.kv_cache_method],
                ["overhead", estimate.overhead_str, estimate.overhead_method],
                ["total", estimate.total_str, ""]]
        display(Table(["part", "bytes", "how"], rows, caption=f"Estimate for {args.model}",
                      notes=[estimate.parameters_str] if estimate.parameters else []))

    def _command_config(self, args: Any) -> None:
        if args.path:
            self.manager.read_config(args.path)
        path = self.manager.config_path
        registered = self.manager.ids()
        where = str(path) if path else ("none: set $JUPYTER_LLM_MANAGER_CONFIG or create "
                                        "~/.jupyter/llm_manager.yaml, or read one with %llm config PATH")
        _say(f"Configuration file: {where}\n{len(registered)} ids registered: {', '.join(registered) or '-'}")

    def _command_gc(self, args: Any) -> None:
        report = self.manager.collect_garbage()
        rows = [[device, format_bytes(report.used_before[device]), format_bytes(report.used_after.get(device)),
                 format_bytes(report.freed_bytes.get(device, 0))] for device in report.used_before]
        notes = [f"{model_id!r} was unloaded but is still alive, held by {', '.join(holders) or 'an unknown reference'}."
                 for model_id, holders in report.lingering.items()]
        if report.lingering:
            from .holders import HOLDER_HINT

            notes.append(HOLDER_HINT)
        else:
            notes.append("No unloaded model is still alive.")
        display(Table(["device", "used before", "used after", "freed"], rows,
                      caption=f"Garbage collected in {report.seconds:.2f} s", notes=notes))

    def _command_dashboard(self, args: Any) -> None:
        from .dashboard import Dashboard

        for old in [d for d in self._dashboards if d.orphaned or d.closed]:  # their outputs are gone
            old.close()
            self._dashboards.remove(old)
        dashboard = Dashboard(self.manager)
        self._dashboards.append(dashboard)
        display(dashboard)

    def _command_reset(self, args: Any) -> None:
        forgotten = self.chats.reset(args.chat)
        if args.chat and not forgotten:
            raise UsageError(f"No conversation named {args.chat!r}; known: {', '.join(self.chats.names()) or '-'}")
        _say(f"Forgot {len(forgotten)} conversation(s): {', '.join(forgotten) or '-'}.")

    # -- completion ------------------------------------------------------------------

    def complete(self, line: str, token: str) -> list[str] | None:
        """Model ids after ``%%llm`` and ``%llm load|unload|...``; subcommands after ``%llm``."""
        words = line.split()
        if not words or token.startswith("-"):
            return None
        if words[0] == "%%llm":
            return [i for i in self.manager.ids() if i.startswith(token)]
        if words[0] != "%llm":
            return None
        position = len(words) - (1 if token else 0)
        if position == 1:
            return [c for c in _LINE_SUBCOMMANDS if c.startswith(token)]
        if position >= 2 and words[1] in _MODEL_COMMANDS:
            return [i for i in self.manager.ids() if i.startswith(token)]
        return None


_LINE_SUBCOMMANDS = sorted([a for a in _LINE_PARSER._actions if a.dest == "command"][0].choices)


def _matcher_for(magics: LLMMagics) -> Any:
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher()
    def complete_llm(context: Any) -> dict[str, Any]:
        found = magics.complete(context.text_until_cursor.rsplit("\n", 1)[-1], context.token)
        return {"completions": [SimpleCompletion(text=f, type="model") for f in (found or [])],
                "suppress": bool(found)}

    return complete_llm


_registered: dict[int, tuple[LLMMagics, Any, Any]] = {}


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext jupyter_llm_manager``: the magics, their completion and configuration, and JupyterLab's comm."""
    if id(shell) in _registered:
        return
    from .lab import LabBridge

    magics = LLMMagics(shell=shell)
    shell.register_magics(magics)
    matcher = _matcher_for(magics)
    if getattr(shell, "Completer", None) is not None:
        shell.Completer.custom_matchers.append(matcher)
    bridge = LabBridge(magics.manager)
    bridge.attach()
    _registered[id(shell)] = (magics, matcher, bridge)


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext jupyter_llm_manager``: remove everything ``load`` added; models stay loaded."""
    magics, matcher, bridge = _registered.pop(id(shell), (None, None, None))
    if magics is None:
        return
    bridge.detach()
    for dashboard in magics._dashboards:
        dashboard.close()
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("llm", None)
    shell.magics_manager.registry.pop(type(magics).__name__, None)
    if magics in shell.configurables:
        shell.configurables.remove(magics)
    if getattr(shell, "Completer", None) is not None and matcher in shell.Completer.custom_matchers:
        shell.Completer.custom_matchers.remove(matcher)
