"""The arguments of ``%%llm`` and ``%llm``: parsers, their usage text, and how a line is split.

``%%llm?`` and ``%llm help`` print :func:`usage`, generated from these
parsers, so the help can never disagree with what is accepted.
"""

from __future__ import annotations

import argparse
import ast
import difflib
from dataclasses import fields
from typing import Any, NoReturn

from IPython.core.error import UsageError
from IPython.core.magic_arguments import MagicArgumentParser
from IPython.utils.process import arg_split

from ...generation import GenerationParams
from .rendering import FORMATS

__all__ = ["CELL_PARSER", "LINE_COMMANDS", "LINE_PARSER", "MODEL_COMMANDS", "parse", "parse_value", "usage"]

#: Subcommands of ``%llm`` whose argument is a model id (Tab completes ids there).
MODEL_COMMANDS = frozenset({"load", "unload", "pin", "unpin", "estimate", "default", "alias", "plan", "select"})


class _Parser(MagicArgumentParser):
    """A parser whose "unrecognized arguments" error points to the option meant (``--max-tokens``: ``-n``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.spellings: list[tuple[str, ...]] = []  # each option's spellings, for suggestions
        self.commands: list[_Parser] = []

    def add_argument(self, *args: Any, **kwargs: Any) -> argparse.Action:
        action = super().add_argument(*args, **kwargs)
        if action.option_strings:
            self.spellings.append(tuple(action.option_strings))
        return action

    def add_parser(self, commands: Any, name: str, **kwargs: Any) -> _Parser:
        """A subcommand's parser, remembered so that its options are suggested too."""
        parser: _Parser = commands.add_parser(name, **kwargs)
        self.commands.append(parser)
        return parser

    def error(self, message: str) -> NoReturn:
        raise UsageError(message + self._suggestions(message))

    def _suggestions(self, message: str) -> str:
        """"; --max-tokens: did you mean -n/--max-new-tokens?" for each unknown option with a close match."""
        if "unrecognized arguments:" not in message:
            return ""
        spellings = {name: "/".join(names) for parser in (self, *self.commands) for names in parser.spellings
                     for name in names if name.startswith("--")}
        hints = []
        for word in message.partition("unrecognized arguments:")[2].split():
            name = word.partition("=")[0]
            close = difflib.get_close_matches(name, list(spellings), n=1, cutoff=0.6) if name.startswith("-") else []
            if close:
                hints.append(f"{name}: did you mean {spellings[close[0]]}?")
        return "; " + "; ".join(hints) if hints else ""


#: The length of an answer when neither ``-n`` nor the model's own settings give one.
DEFAULT_MAX_NEW_TOKENS = next(f.default for f in fields(GenerationParams) if f.name == "max_new_tokens")


class _HelpFormatter(argparse.HelpFormatter):
    """Plain argparse help, 100 columns wide (IPython's formatter adds a Sphinx block and a '%')."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=100, max_help_position=30)


def _cell_parser() -> MagicArgumentParser:
    parser = _Parser(
        prog="%%llm", formatter_class=_HelpFormatter,
        description="Send the cell to one or more models and stream the answer into the output. {name} and "
                    "{name[index]} are replaced by notebook values; {{text}} is a literal {text}; any other braces "
                    "are sent as written.")
    parser.add_argument("model", nargs="*", metavar="MODEL",
                        help="model ids or aliases; none: the default model. Several: the same prompt to each, "
                             "side by side")
    parser.add_argument("-o", "--output", metavar="VAR",
                        help="store the answer text in VAR (a dict id -> text for several models)")
    parser.add_argument("-f", "--format", choices=FORMATS, default=None,
                        help="how to render the answer (default markdown); code puts it in a new cell below")
    parser.add_argument("-n", "--max-new-tokens", type=int, metavar="N",
                        help=f"at most N new tokens (default: the model's generation settings, else "
                             f"{DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("-t", "--temperature", type=float, metavar="T", help="sampling temperature (0 = greedy)")
    parser.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling probability")
    parser.add_argument("--seed", type=int, metavar="S", help="random seed, for a repeatable sample")
    parser.add_argument("--system", metavar="TEXT", help="a system message before the prompt")
    parser.add_argument("--chat", metavar="NAME", help="continue the conversation NAME (%%llm reset NAME clears it)")
    parser.add_argument("--raw", action="store_true", help="send the text as is, without the chat template")
    parser.add_argument("--no-stream", action="store_true", help="show the answer once it is complete")
    parser.add_argument("--no-share", action="store_true",
                        help="run on this kernel's own copy, never on another notebook's (share: off for this cell)")
    parser.add_argument("--wait", metavar="SECONDS",
                        help="how long to wait for room when every slot is busy (default: the wait_timeout setting)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                        help="any other generation parameter, e.g. -p top_k=40 -p repetition_penalty=1.1")
    return parser


def _line_parser() -> tuple[MagicArgumentParser, dict[str, MagicArgumentParser]]:
    parser = _Parser(prog="%llm", formatter_class=_HelpFormatter,
                                 description="Manage the models of this kernel.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    found: dict[str, MagicArgumentParser] = {}

    def command(name: str, help_text: str) -> MagicArgumentParser:
        found[name] = parser.add_parser(commands, name, help=help_text.replace("%", "%%"), description=help_text,
                                        formatter_class=_HelpFormatter)
        found[name].allow_abbrev = False  # --base is an option of its own, not an abbreviation of --base-url
        return found[name]

    command("list", "registered models and aliases")
    status = command("status", "state, device, memory estimate and actual, last use and keep-alive left; devices")
    status.add_argument("--all", action="store_true",
                        help="every kernel on this machine: the models each notebook holds, by device")
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
    register.add_argument("source", nargs="?", metavar="SOURCE",
                          help="a Hub id, a local folder or a .gguf file; for --backend openai, the server's URL")
    register.add_argument("--backend", default=None,
                          help="transformers (default), llama_cpp for a .gguf file, or openai for a server")
    register.add_argument("--gguf-file", metavar="NAME.gguf", help="the GGUF file in the SOURCE folder or Hub repo")
    register.add_argument("--mode", choices=("chat", "embed"), help="chat (default) or embed (vectors)")
    register.add_argument("--max-context", metavar="TOKENS", help="context length in tokens; auto (llama_cpp)")
    register.add_argument("--base-url", metavar="URL",
                          help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1 (implies --backend openai)")
    register.add_argument("--model", metavar="NAME", help="the model name the server serves (default: ID)")
    register.add_argument("--api-key", metavar="'${VAR}'",
                          help="the server's key as a reference to an environment variable, never the key itself")
    register.add_argument("--base", metavar="MODEL",
                          help="a LoRA adapter: the registered model it runs on (give --adapter too)")
    register.add_argument("--adapter", metavar="PATH",
                          help="a LoRA adapter: a PEFT folder or Hub id, or a GGUF LoRA file (llama_cpp base)")
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
    plan = command("plan", "would these models fit together? (default: each task's selected option) Loads nothing")
    plan.add_argument("models", nargs="*", metavar="MODEL")
    select = command("select", "choose the option TASK runs (without OPTION: list its options)")
    select.add_argument("task", metavar="TASK")
    select.add_argument("option", nargs="?", metavar="OPTION")
    command("dashboard", "open the models dashboard (devices, models, actions, events)")
    command("help", "show this help")
    return parser, found


CELL_PARSER = _cell_parser()
LINE_PARSER, _COMMAND_PARSERS = _line_parser()
#: The subcommands of ``%llm``, sorted.
LINE_COMMANDS = tuple(sorted(_COMMAND_PARSERS))


def usage() -> str:
    """The full usage of ``%%llm`` and ``%llm``, from the parsers."""
    parts = [CELL_PARSER.format_help(), LINE_PARSER.format_help()]
    parts += [parser.format_help() for parser in _COMMAND_PARSERS.values()]
    return "\n".join(parts)


def parse(parser: MagicArgumentParser, line: str) -> argparse.Namespace:
    """Split like a shell (quotes group words and are removed), then parse; errors are UsageError."""
    return parser.parse_args(arg_split(line, posix=True, strict=False))


def parse_value(text: str) -> Any:
    """``-p`` values: Python literals (``40``, ``1.1``, ``true``, ``['###']``), else the text."""
    lowered = {"true": True, "false": False, "none": None, "null": None}
    if text.lower() in lowered:
        return lowered[text.lower()]
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return text
