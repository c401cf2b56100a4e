"""What ``%%llm`` does with a cell: the prompt, each model's answer streamed into one view, the footer.

A plain class (the magics class only holds it): it reads the parsed
arguments, puts notebook values into the prompt, asks each model in turn
and shows in the status line what the manager does meanwhile — waiting for
room, loading, evicting — from the events this cell's thread causes.
"""

from __future__ import annotations

import argparse
import keyword
import re
import threading
import time
from collections.abc import Callable, Container
from typing import Any

from IPython.core.error import UsageError

from ...errors import LLMManagerError
from ...events import Event
from ...generation import GenerationResult
from ...manager.facade import LLMManager
from ...models.demo import NOISE_NOTE, is_demo
from .arguments import parse_value
from .chats import ChatSessions
from .interpolate import interpolate
from .lost import LostModels
from .rendering import AnswerView, Format, extract_code

__all__ = ["CellAsker", "check_output_name"]

#: Names IPython keeps for itself in the user namespace (plus ``_N``, ``_iN`` and ``user_ns_hidden``).
_IPYTHON_NAMES = frozenset({"In", "Out", "_", "__", "___", "_i", "_ii", "_iii", "_ih", "_oh", "_dh",
                            "get_ipython", "exit", "quit"})
_NUMBERED = re.compile(r"_i?\d+")
#: A model's footer when it failed: the error itself is said once, below the cell, by the magic.
_FAILED = "failed"


def check_output_name(name: str, hidden: Container[str] = ()) -> str:
    """``-o VAR``: a plain identifier that is no keyword, no dunder and none of IPython's own names."""
    reason = None
    if not name.isidentifier():
        reason = "is not a Python identifier"
    elif keyword.iskeyword(name):
        reason = "is a Python keyword"
    elif name.startswith("__") and name.endswith("__"):
        reason = "is a special (dunder) name"
    elif name in _IPYTHON_NAMES or _NUMBERED.fullmatch(name) or name in hidden:
        reason = "is one of IPython's own names (In, Out, _, _N, _iN, ...)"
    if reason:
        raise UsageError(f"-o {name!r} {reason}: store the answer in a plain variable name such as answer")
    return name


class _Interrupted(Exception):
    """Ctrl-C while a model answered: stop asking, keep what it said."""

    def __init__(self, model_id: str, text: str) -> None:
        super().__init__(model_id)
        self.model_id = model_id
        self.text = text


class CellAsker:
    """Runs one ``%%llm`` cell against the manager (see the module docstring)."""

    def __init__(self, manager: Callable[[], LLMManager], chats: ChatSessions,
                 make_view: Callable[[list[str], Format], AnswerView]) -> None:
        self._manager = manager
        self.chats = chats
        self._make_view = make_view
        self._noted_demo = False
        self.lost = LostModels()

    def run(self, args: argparse.Namespace, cell: str, namespace: dict[str, Any], fmt: Format) -> dict[str, str]:
        """Ask every model of the cell; returns id -> answer text."""
        manager = self._manager()
        models = args.model or [self.default_model()]
        if args.chat and len(models) > 1:
            raise UsageError("--chat continues one conversation: name one model")
        if args.chat and args.raw:
            raise UsageError("--chat sends the conversation through the chat template; drop --raw")
        if fmt == "code" and len(models) > 1:
            raise UsageError("-f code puts one answer in a new cell: name one model")
        for model_id in models:
            manager.text_spec(model_id)  # an unknown id, or one without text, fails before anything runs
        text = interpolate(cell.lstrip("\n").rstrip(), namespace)
        params = self.params(args)
        generation = {key: value for key, value in params.items() if key not in ("wait", "share")}
        for model_id in models:  # a parameter a backend does not take: one line, before anything loads
            manager.generation_params(model_id, **generation)
        view = self._make_view(models, fmt)
        for note in self.lost.news(manager):  # models this kernel lost since the last cell, where no cell said it
            view.notice(note)
        watcher = self._watch_events(view)
        answers: dict[str, str] = {}
        try:
            for model_id in models:
                answers[model_id] = self._ask(model_id, text, args, params, view)
        except _Interrupted as stopped:  # Ctrl-C: the partial answer and "interrupted" are shown, no traceback
            answers[stopped.model_id] = stopped.text
        finally:
            watcher()
            view.close()
        return answers

    def default_model(self) -> str:
        """The model of a ``%%llm`` line without one: the manager's default, else the only model."""
        manager = self._manager()
        if manager.default_model:
            return manager.default_model
        ids = [row.id for row in manager.status()]
        if len(ids) == 1:
            return ids[0]
        raise UsageError("No model named and no default: write %%llm MODEL, or set one with %llm default MODEL"
                         + (f" (registered: {', '.join(ids)})" if ids else " after %llm register ID SOURCE"))

    @staticmethod
    def params(args: argparse.Namespace) -> dict[str, Any]:
        """Generation parameters from the options and ``-p KEY=VALUE``."""
        params: dict[str, Any] = {}
        for name in ("max_new_tokens", "temperature", "top_p", "seed"):
            if getattr(args, name) is not None:
                params[name] = getattr(args, name)
        if args.wait is not None:
            params["wait"] = args.wait
        if args.no_share:
            params["share"] = False
        for item in args.param:
            key, equals, value = item.partition("=")
            if not equals or not key.strip().isidentifier():
                raise UsageError(f"-p expects KEY=VALUE, got {item!r}")
            params[key.strip()] = parse_value(value.strip())
        return params

    @staticmethod
    def code_of(answer: str) -> str:
        return extract_code(answer)

    def _ask(self, model_id: str, text: str, args: argparse.Namespace, params: dict[str, Any], view: AnswerView) -> str:
        manager = self._manager()
        canonical = manager.resolve(model_id)
        if is_demo(canonical) and not self._noted_demo:  # said once per session, whatever the model
            self._noted_demo = True
            view.notice(NOISE_NOTE)
        prompt: Any = self.chats.messages(args.chat, text, args.system) if args.chat else text
        system = None if args.chat else args.system
        result: GenerationResult | None
        if args.no_stream:
            try:
                result = manager.generate(model_id, prompt, system=system, raw=args.raw, **params)
            except LLMManagerError:
                view.finish(model_id, None, error=_FAILED)
                raise
            except KeyboardInterrupt:
                view.finish(model_id, None, error="interrupted before the answer was complete")
                raise _Interrupted(model_id, "") from None
        else:
            stream = manager.stream(model_id, prompt, system=system, raw=args.raw, **params)
            try:
                for piece in stream:
                    view.add(model_id, piece)
            except KeyboardInterrupt:
                stream.close()  # the backend stops within a token and says how far it got
                view.finish(model_id, stream.result)
                raise _Interrupted(model_id, stream.result.text if stream.result else stream.text) from None
            except LLMManagerError:
                view.finish(model_id, None, error=_FAILED)
                raise
            finally:
                stream.close()
            result = stream.result
            assert result is not None  # a stream that ended normally has its result
        view.finish(model_id, result)
        if args.chat and result.finish_reason != "interrupted":
            self.chats.record(args.chat, prompt, result.text)
        return result.text

    def _watch_events(self, view: AnswerView) -> Callable[[], None]:
        """Show what the manager does for this cell (its thread's events) in the status line.

        A load that takes more than a moment shows its elapsed time, updated
        by a ticker thread until the load ends.
        """
        cell_thread = threading.current_thread()
        ticker = _LoadTicker(view)
        waiting = _WaitNote(view)

        def on_event(event: Event) -> None:
            if threading.current_thread() is not cell_thread:
                return
            if event.kind == "waiting":
                waiting.say(event.message)
                return
            if event.kind != "warning":
                waiting.end()  # what comes next (room made, a load, an answer): the wait is over
            if event.kind == "evicted":
                self.lost.told(event)  # this cell says it: no note about it in the next one
            if event.kind == "loading" and event.model_id:
                ticker.start(event.model_id)
            elif event.kind == "load_progress":
                ticker.say(event.message)
            elif event.kind in ("loaded", "load_failed"):
                ticker.stop()
            note = _note(event)
            if note:
                view.status(note)

        unsubscribe = self._manager().subscribe(on_event)

        def stop_watching() -> None:
            unsubscribe()
            ticker.stop()
            waiting.end()

        return stop_watching


class _LoadTicker:
    """``loading smollm2…`` in the status line while a load runs: what it does now, and the elapsed time."""

    def __init__(self, view: AnswerView, *, after: float = 1.0, every: float = 0.5) -> None:
        self._view = view
        self._after = after
        self._every = every
        self._done: threading.Event | None = None
        self._lock = threading.Lock()  # a tick never lands after stop() cleared the note
        self._text = self._detail = ""
        self._started = 0.0

    def start(self, model_id: str) -> None:
        self.stop()
        done = self._done = threading.Event()
        with self._lock:
            self._text, self._detail, self._started = f"loading {model_id}…", "", time.monotonic()
            self._view.progress(self._text)

        def tick() -> None:
            done.wait(self._after)
            while True:
                with self._lock:
                    if done.is_set():
                        return
                    self._show()
                done.wait(self._every)

        threading.Thread(target=tick, name="llm-load-ticker", daemon=True).start()

    def say(self, message: str) -> None:
        """What the load does now (``converting … from GGUF``), shown until the next message."""
        with self._lock:
            if self._done is not None and message:
                self._detail = message
                self._show()

    def _show(self) -> None:
        elapsed = time.monotonic() - self._started
        parts = [self._text, self._detail, f"{elapsed:.0f} s" if elapsed >= self._after else ""]
        self._view.progress(" ".join(part for part in parts if part))

    def stop(self) -> None:
        with self._lock:
            if self._done is not None:
                self._done.set()
                self._done = None
                self._view.progress(None)


class _WaitNote:
    """``waiting for capacity: …`` in the status line while a request waits; once it ends, how long it waited.

    Not a stale line: the note becomes ``waited 2.1 s for capacity: smollm2 in use in analysis.ipynb``.
    """

    def __init__(self, view: AnswerView) -> None:
        self._view = view
        self._shown: str | None = None
        self._reason = ""
        self._since = 0.0

    def say(self, reason: str) -> None:
        if self._shown is None:
            self._since = time.monotonic()
        self._reason = reason
        self._show(reason)

    def end(self) -> None:
        if self._shown is not None:
            seconds = time.monotonic() - self._since
            waited = f"waited {seconds:.1f} s"
            reason = self._reason
            self._show(waited + reason.removeprefix("waiting") if reason.startswith("waiting ")
                       else f"{waited} ({reason})")
            self._shown = None

    def _show(self, note: str) -> None:
        self._view.status(note, replaces=self._shown)
        self._shown = note


def _note(event: Event) -> str | None:
    if event.kind == "loaded" and event.seconds is not None:
        seconds = f"{event.seconds:.2f}" if event.seconds < 1 else f"{event.seconds:.1f}"
        imported = [part for part in event.message.split(" · ") if part.startswith("imported ")]
        return " · ".join([*imported, f"loaded {event.model_id} in {seconds} s ({event.bytes_str})"])
    if event.kind == "evicted":
        return f"made room: evicted {event.model_id} ({event.reason}, {event.bytes_str})"
    if event.kind == "made_room":
        return f"made room: {event.message} ({event.bytes_str})"
    if event.kind == "warning":
        return event.message
    return None
