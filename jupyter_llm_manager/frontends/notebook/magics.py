"""``%%llm`` and ``%llm``: the notebook front-end over the manager. No policy here.

``%load_ext jupyter_llm_manager`` registers them; ``%unload_ext`` removes
them; ``%reload_ext`` keeps the loaded models (the manager is the kernel-wide
singleton) and the chat histories. ``%%llm?`` and ``%llm help`` print the
usage generated from the argument parsers (:mod:`.magic_args`). The work is
done by two plain classes this one holds: :class:`~.asking.CellAsker` for
``%%llm`` and :class:`~.commands.LineCommands` for ``%llm``.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from traitlets import Bool, Enum, Float, Unicode, observe

from ...errors import LLMManagerError, ModelNotFoundError
from ...manager.facade import LLMManager
from ...manager.kernel import get_manager
from .. import actions
from ..lab_bridge import LabBridge
from .arguments import CELL_PARSER, LINE_COMMANDS, LINE_PARSER, MODEL_COMMANDS, parse, usage
from .cell import CellAsker, check_output_name
from .chats import ChatSessions
from .line_commands import LineCommands, say_notices
from .rendering import FORMATS, AnswerView, Format, RichAnswerView, TextAnswerView, as_format

__all__ = ["LLMMagics", "load_ipython_extension", "unload_ipython_extension", "usage"]

log = logging.getLogger(__name__)

#: Conversations survive %reload_ext, like the models.
_CHATS = ChatSessions()


@contextlib.contextmanager
def _user_errors() -> Iterator[None]:
    """A user's mistake is one line (UsageError), not a traceback."""
    try:
        yield
    except ModelNotFoundError as error:  # said the notebook way
        close = " or ".join(map(repr, error.close_matches))
        hint = f"Did you mean {close}?" if close else "Register it with %llm register ID SOURCE, or see %llm list."
        raise UsageError(f"No model is registered as {error.model_id!r}. {hint}") from None
    except LLMManagerError as error:
        raise UsageError(str(error).replace(_PYTHON_WAIT, _MAGIC_WAIT)) from None


#: The Python API's advice to wait longer, and the same said the magics' way.
_PYTHON_WAIT = "Pass wait= a longer time (math.inf: no limit)"
_MAGIC_WAIT = "Run the cell with a longer --wait (such as --wait 5m; --wait never: no limit)"


@magics_class
class LLMMagics(Magics):
    """The ``%%llm`` cell magic and the ``%llm`` line magics."""

    default_model = Unicode(None, allow_none=True,
                            help="Model for %%llm when none is named: sets the manager's default_model.").tag(config=True)
    wait_timeout = Float(None, allow_none=True,
                         help="Seconds a request waits for room (inf: no limit): sets the manager's "
                              "wait_timeout.").tag(config=True)
    default_format = Enum(FORMATS, "markdown", help="How %%llm renders answers by default.").tag(config=True)
    stream_interval = Float(0.1, help="Seconds between display updates while streaming.").tag(config=True)
    show_footer = Bool(True, help="Show loading, evictions and tokens per second below answers.").tag(config=True)
    plain_text = Bool(None, allow_none=True,
                      help="Write plain text instead of rich displays (default: only in a terminal).").tag(config=True)

    def __init__(self, shell: Any = None, manager: LLMManager | None = None, **kwargs: Any) -> None:
        self._manager = manager  # before the traits: configured values are passed on to the manager
        self.chats = _CHATS
        self.asker = CellAsker(lambda: self.manager, self.chats, self._view)
        self.commands = LineCommands(lambda: self.manager, self.chats, self._set_default)
        self._ready = False
        super().__init__(shell=shell, **kwargs)
        self._ready = True

    @property
    def manager(self) -> LLMManager:
        if self._manager is None:
            self._manager = get_manager()
        return self._manager

    @manager.setter
    def manager(self, value: LLMManager) -> None:
        self._manager = value

    @observe("default_model", "wait_timeout")
    def _pass_on(self, change: Any) -> None:
        """The manager keeps these settings; the traits only set them."""
        name, value = change["name"], change["new"]
        if value is None or getattr(self.manager, name) == value:
            return
        try:
            self.manager.configure(**{name: value})
        except LLMManagerError as error:
            if not self._ready:  # from ipython_config.py: the magics still load, the setting is not taken
                log.error("c.LLMMagics.%s is not used: %s", name, error)
                return
            raise UsageError(str(error)) from None

    def _set_default(self, model_id: str) -> str:
        """``%llm default MODEL``: the manager's setting, and the trait that shows it."""
        message = actions.set_default(self.manager, model_id)
        self.default_model = model_id
        return message

    @line_cell_magic
    def llm(self, line: str, cell: str | None = None) -> None:
        with _user_errors():
            if cell is None:
                self.commands.run(parse(LINE_PARSER, line))
            else:
                say_notices(self.manager)
                self._cell(line, cell)

    llm.__doc__ = usage()

    def _cell(self, line: str, cell: str) -> None:
        assert self.shell is not None  # magics run in a shell
        args = parse(CELL_PARSER, line)
        if args.output:
            check_output_name(args.output, getattr(self.shell, "user_ns_hidden", {}))
        fmt = as_format(args.format or self.default_format)
        answers = self.asker.run(args, cell, self.shell.user_ns, fmt)
        models = list(answers)
        if args.output:
            self.shell.user_ns[args.output] = answers if len(models) > 1 else answers[models[0]]
        if fmt == "code" and answers.get(models[0]):
            self.shell.set_next_input(self.asker.code_of(answers[models[0]]), replace=False)

    def _view(self, models: list[str], fmt: Format) -> AnswerView:
        plain = self.plain_text
        if plain is None:
            plain = type(self.shell).__name__ == "TerminalInteractiveShell"
        view_class = TextAnswerView if plain else RichAnswerView
        return view_class(models, fmt, interval=self.stream_interval, footer=self.show_footer)

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
            return [c for c in LINE_COMMANDS if c.startswith(token)]
        if position >= 2 and words[1] in MODEL_COMMANDS:
            return [i for i in self.manager.ids() if i.startswith(token)]
        return None


def _matcher_for(magics: LLMMagics) -> Any:
    from IPython.core.completer import SimpleCompletion, context_matcher

    @context_matcher()
    def complete_llm(context: Any) -> dict[str, Any]:
        found = magics.complete(context.text_until_cursor.rsplit("\n", 1)[-1], context.token)
        return {"completions": [SimpleCompletion(text=f, type="model") for f in (found or [])],
                "suppress": bool(found)}

    return complete_llm


_registered: dict[int, tuple[LLMMagics, Any, LabBridge | None]] = {}


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext jupyter_llm_manager``: the magics, their completion and configuration, and JupyterLab's comm."""
    if id(shell) in _registered:
        return
    magics = LLMMagics(shell=shell)
    shell.register_magics(magics)
    matcher = _matcher_for(magics)
    if getattr(shell, "Completer", None) is not None:
        shell.Completer.custom_matchers.append(matcher)
    try:
        bridge: LabBridge | None = LabBridge(magics.manager)
    except LLMManagerError as error:  # a broken configuration file: one line; the magics stay, to fix it
        bridge = None
        sys.stderr.write(f"jupyter_llm_manager: {error}\nThe %llm magics are loaded: fix the file, then run "
                         "%reload_ext jupyter_llm_manager.\n")
    if bridge is not None:
        bridge.attach()
        say_notices(magics.manager)  # models the configuration marks preload that load at first use
    _registered[id(shell)] = (magics, matcher, bridge)


def unload_ipython_extension(shell: Any) -> None:
    """``%unload_ext jupyter_llm_manager``: remove everything ``load`` added; models stay loaded."""
    registered = _registered.pop(id(shell), None)
    if registered is None:
        return
    magics, matcher, bridge = registered
    if bridge is not None:
        bridge.detach()
    magics.commands.close_dashboard()
    for kind in ("line", "cell"):
        shell.magics_manager.magics[kind].pop("llm", None)
    shell.magics_manager.registry.pop(type(magics).__name__, None)
    if magics in shell.configurables:
        shell.configurables.remove(magics)
    if getattr(shell, "Completer", None) is not None and matcher in shell.Completer.custom_matchers:
        shell.Completer.custom_matchers.remove(matcher)
