"""The one generation path: ``generate``, ``stream`` and ``embed`` (and their async forms) through one bracket.

Every call runs inside one :class:`Run`, written once here:
``generation_started``, a lease from admission (loading or waiting for room
as needed), the request's turn where the backend answers one request at a
time (llama.cpp: the others queue, told their position), the backend call,
the release, ``generation_finished`` with the tokens, the speed or why it
stopped. No event is delivered while the lease is held for it. The facade
resolves the id once and checks what the model can be asked (text or
vectors) before anything loads.

The stop and interrupt protocol, the same for every backend:

- ``stop`` (a ``threading.Event``) set: the backend ends within one token and
  its result says ``interrupted``;
- Ctrl-C inside the backend call: a backend that can say what it made raises
  :class:`~jupyter_llm_manager.generation.StreamInterrupted` with its result;
  for any other ``KeyboardInterrupt`` the result is built here from the
  pieces streamed so far;
- a stream closed early (``break``, ``close()``, an interrupt): ``stop`` is
  set, the backend finishes its token, and the lease is released at once.
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from ..backends.base import Backend, LoadedModel, check_extra_params
from ..config.spec import ModelSpec
from ..errors import (
    GenerationError,
    InvalidGenerationParameters,
    LLMManagerError,
    ResourceNotAvailableError,
    WrongModelKind,
)
from ..events import EventBus
from ..generation import GenerationParams, GenerationResult, Prompt, StreamInterrupted
from ..support.deadlines import Deadline
from ..support.units import brief
from .instances import TurnCancelled, TurnHeld, TurnTimeout
from .state import Ticket

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MAX_TEXTS", "AnyRun", "Ask", "Generations", "Run", "TextStream", "checked_texts", "text_model"]

#: The most texts one ``embed`` call takes (split larger batches).
MAX_TEXTS = 4096


class Run:
    """One generation's bracket: the lease (and turn) it runs under, and its end. :meth:`end` once, always."""

    __slots__ = ("_bus", "_ended", "started", "ticket", "turn")

    def __init__(self, bus: EventBus, ticket: Ticket, turn: int | None) -> None:
        self._bus = bus
        self.ticket = ticket
        self.turn = turn
        self._ended = False
        self.started = time.perf_counter()

    @property
    def backend(self) -> Backend:
        return self.ticket.instance.backend

    @property
    def loaded(self) -> LoadedModel:
        return self.ticket.loaded

    @property
    def model_id(self) -> str:
        return self.ticket.model_id

    def stream(self, ask: Ask, model_id: str, stop: threading.Event) -> Generator[str, None, GenerationResult]:
        assert ask.params is not None and ask.prompt is not None
        return self.backend.stream(self.loaded, ask.prompt, ask.params, model_id=model_id, raw=ask.raw, stop=stop)

    def generate(self, ask: Ask, model_id: str) -> GenerationResult:
        assert ask.params is not None and ask.prompt is not None
        return self.backend.generate(self.loaded, ask.prompt, ask.params, model_id=model_id, raw=ask.raw)

    def embed(self, ask: Ask, model_id: str) -> list[list[float]]:
        return self.backend.embed(self.loaded, ask.texts, model_id=model_id)

    def end(self, result: GenerationResult | None, error: BaseException | None, *, done: str | None = None) -> None:
        """Release the lease, then say how it went (``done`` describes a call that makes no text)."""
        if self._ended:
            return
        self._ended = True
        if self.turn is not None:
            self.ticket.instance.turns.give(self.turn)
        self.ticket.release()
        canonical = self.ticket.canonical
        if result is not None:
            message = f"{result.completion_tokens} tokens, {result.tokens_per_second:.1f} tok/s"
            if result.finish_reason == "interrupted":
                message += ", interrupted"
            self._bus.emit("generation_finished", canonical, seconds=result.seconds, message=message)
            for warning in result.warnings:
                self._bus.emit("warning", canonical, message=warning)
        elif error is None:
            self._bus.emit("generation_finished", canonical, seconds=time.perf_counter() - self.started,
                           message=done or "")
        else:
            text = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
            self._bus.emit("generation_finished", canonical, message=text)


@dataclass(frozen=True)
class Ask:
    """What one call asks of a model: a prompt with its parameters, or texts to embed. A copy in another process
    (:mod:`.sharing.borrowing`) is sent exactly this, so it runs the same generation a local copy would."""

    prompt: Prompt | None = None
    params: GenerationParams | None = None
    raw: bool = False
    texts: Sequence[str] = ()
    share: bool = True  # this call may run on another process's copy (``share=False``: only on a local one)
    told: Callable[[str], None] | None = None  # also told its place while it waits for its turn (a lent request)


class AnyRun(Protocol):
    """A generation's bracket: :class:`Run` on a local copy, or a run on another process's copy (borrowed)."""

    started: float

    def stream(self, ask: Ask, model_id: str, stop: threading.Event) -> Generator[str, None, GenerationResult]: ...

    def generate(self, ask: Ask, model_id: str) -> GenerationResult: ...

    def embed(self, ask: Ask, model_id: str) -> list[list[float]]: ...

    def end(self, result: GenerationResult | None, error: BaseException | None, *, done: str | None = None) -> None:
        ...


#: Another process's copy for a call, when one answers it: (model id, canonical id, the call, deadline, the stream's
#: stop) -> a run.
Borrow = Callable[[str, str, Ask, Deadline, "threading.Event | None"], "AnyRun | None"]


class Generations:
    """Runs every generation of one manager: ``acquire`` is admission's lease, ``deadline`` the manager's clock,
    ``borrow`` (set once the manager is wired) finds another process's copy to answer instead."""

    def __init__(self, bus: EventBus, acquire: Callable[..., Ticket], deadline: Callable[[float], Deadline]) -> None:
        self._bus = bus
        self._acquire = acquire
        self._deadline = deadline
        self._streams: weakref.WeakSet[TextStream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()
        self.borrow: Borrow | None = None

    def begin(self, model_id: str, canonical: str, wait: float, ask: Ask | None = None, *,
              existing: bool = False, stop: threading.Event | None = None) -> AnyRun:
        """``generation_started``, then a run: on another process's copy where one answers ``ask`` (see
        :mod:`.sharing.borrowing`), else a lease on ``model_id`` and its turn, waiting up to ``wait`` seconds.
        ``existing``: only a copy loaded (or loading) here now, never a new load (a request lent to another);
        ``stop`` set while it waits for its turn gives up the wait."""
        self._bus.emit("generation_started", canonical)
        deadline = self._deadline(wait)
        ticket: Ticket | None = None
        try:
            borrowed = (self.borrow(model_id, canonical, ask, deadline, stop) if self.borrow and ask and ask.share
                        else None)
            if borrowed is not None:
                return borrowed
            ticket = self._acquire(model_id, deadline, existing=existing)
            turn = self._turn(ticket, deadline, ask.told if ask is not None else None, stop)
        except BaseException as error:
            if ticket is not None:
                ticket.release()
            text = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
            self._bus.emit("generation_finished", canonical, message=text)
            raise
        return Run(self._bus, ticket, turn)

    def _turn(self, ticket: Ticket, deadline: Deadline, tell: Callable[[str], None] | None = None,
              stop: threading.Event | None = None) -> int:
        """This request's ticket: a free run, or its turn on an instance that answers one at a time (waiting
        ones are told their place). Free runs are counted so that an instance turning serial waits for them."""
        name = ticket.canonical

        def told(ahead: int) -> None:
            message = (f"waiting for its turn on {name}: {ahead} request{'s' if ahead != 1 else ''} ahead "
                       f"({name} answers one at a time)")
            self._bus.emit("waiting", name, position=ahead, message=message)
            if tell is not None:
                tell(message)

        instance = ticket.instance
        shared = instance.base is not None or instance.has_adapters  # one model, its adapters switched per request
        try:  # inside this thread's use() block of the same model, it runs in that block's turn
            return instance.turns.enter(deadline, told, owner=instance.key, nests=shared, joins=True, stop=stop)
        except TurnHeld as held:
            if shared and held.owner and held.owner != instance.key:
                raise GenerationError(f"{name!r} shares one model with other adapters of its base, and this thread "
                                      "holds that model for another of them (a stream it has not finished, or a "
                                      "`use()` block): finish it first", model_id=name) from None
            raise GenerationError(f"{name!r} answers one request at a time, and this thread has one running on it "
                                  "already (a stream it has not finished): finish or close that stream first",
                                  model_id=name) from None
        except TurnCancelled:
            raise GenerationError(f"{name!r}: the request was stopped while it waited for its turn",
                                  model_id=name) from None
        except TurnTimeout as timeout:
            waited = "without waiting" if deadline.seconds == 0 else f"after waiting {deadline.seconds:g} s"
            raise ResourceNotAvailableError(
                f"Cannot run {name!r} {waited}: it answers one request at a time and {timeout.position} "
                f"request{'s are' if timeout.position != 1 else ' is'} ahead.", model_id=name,
                hint="Pass wait= a longer time (math.inf: no limit), or let the other requests finish.") from None

    def generate(self, model_id: str, canonical: str, ask: Ask, *, wait: float) -> GenerationResult:
        run = self.begin(model_id, canonical, wait, ask)
        result: GenerationResult | None = None
        error: BaseException | None = None
        try:
            result = run.generate(ask, model_id)
            return result
        except StreamInterrupted as stopped:  # the backend stopped and says what it made
            result, error = stopped.result, stopped
            raise
        except BaseException as failure:
            error = failure
            raise
        finally:
            run.end(result, error)

    def embed(self, model_id: str, canonical: str, ask: Ask, *, wait: float, existing: bool = False
              ) -> list[list[float]]:
        """One vector per text of ``ask``, on a leased instance (an embed-mode model) or a borrowed one."""
        run = self.begin(model_id, canonical, wait, ask, existing=existing)
        vectors: list[list[float]] = []
        error: BaseException | None = None
        try:
            vectors = run.embed(ask, model_id)
            return vectors
        except BaseException as failure:
            error = failure
            raise
        finally:
            run.end(None, error, done=f"{len(vectors)} vectors")

    def stream(self, model_id: str, canonical: str, ask: Ask, *, wait: float) -> TextStream:
        """A :class:`TextStream`: its lease is taken when iteration starts."""
        return self._track(TextStream(lambda stop: self.begin(model_id, canonical, wait, ask, stop=stop), model_id,
                                      ask))

    def lend(self, model_id: str, canonical: str, ask: Ask, *, wait: float) -> TextStream:
        """A stream on the copy loaded (or loading) here, for another process: never a new load, never borrowed.
        Its lease and turn are taken when iteration starts (the server says it is alive meanwhile); a copy gone
        by then refuses it at once (:class:`~jupyter_llm_manager.errors.CopyNotHeld`)."""
        local = replace(ask, share=False)
        return self._track(TextStream(lambda stop: self.begin(model_id, canonical, wait, local, existing=True,
                                                              stop=stop), model_id, local))

    def _track(self, stream: TextStream) -> TextStream:
        with self._streams_lock:
            self._streams.add(stream)
        return stream

    def stop_streams(self) -> int:
        """Ask every stream still alive to end after its current token (the manager is closing); how many."""
        with self._streams_lock:
            streams = list(self._streams)
        for stream in streams:
            stream.stop()
        return len(streams)


class TextStream:
    """Text pieces of one generation, as they are made. Iterate once.

    ``stop()`` ends it from another thread within one token. Closing it early
    (``close()``, ``break``, an interrupt) releases the model for other uses at
    once: the stream holds its iterator weakly, so the iterator a ``for`` loop
    drops on ``break`` is closed there and then, not at the next garbage collection.
    ``.result`` holds the final :class:`~jupyter_llm_manager.generation.GenerationResult`,
    also after an interrupt (``finish_reason="interrupted"``).
    """

    def __init__(self, begin: Callable[[threading.Event], AnyRun], model_id: str, ask: Ask) -> None:
        self.model_id = model_id
        self.result: GenerationResult | None = None
        self._begin = begin
        self._ask = ask
        self._stop = threading.Event()
        self._pieces: list[str] = []
        self._iterator: weakref.ref[Generator[str, None, None]] | None = None
        self._started: float | None = None

    @property
    def text(self) -> str:
        """Everything streamed so far."""
        return "".join(self._pieces)

    def stop(self) -> None:
        """Ask the generation to end after the current token (thread-safe)."""
        self._stop.set()

    def close(self) -> None:
        iterator = self._iterator() if self._iterator is not None else None
        if iterator is not None:
            iterator.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __iter__(self) -> Iterator[str]:
        if self._iterator is not None:
            raise LLMManagerError("a TextStream can be iterated only once; call stream() again")
        iterator = self._run()
        self._iterator = weakref.ref(iterator)
        return iterator

    def _run(self) -> Generator[str, None, None]:
        run = self._begin(self._stop)
        self._started = run.started
        pieces = None
        error: BaseException | None = None
        try:
            if self._stop.is_set():  # stopped while it waited to begin: nothing runs
                self.result = self._interrupted_result()
                return
            pieces = run.stream(self._ask, self.model_id, self._stop)
            while True:
                try:
                    piece = next(pieces)
                except StopIteration as done:
                    self.result = done.value
                    break
                self._pieces.append(piece)
                yield piece
        except BaseException as failure:
            error = failure
            if isinstance(failure, StreamInterrupted):  # the backend stopped and says what it made
                self.result = failure.result
            raise
        finally:
            if pieces is not None:
                if self.result is None and isinstance(error, GeneratorExit):  # closed early: let it finish
                    self.result = self._finish_early(pieces)
                pieces.close()
            if self.result is None and not isinstance(error, Exception):  # interrupted or closed early
                self.result = self._interrupted_result()
            run.end(self.result, error)

    def _finish_early(self, pieces: Iterator[str]) -> GenerationResult | None:
        """Stop the backend and take what it made up to there (it stops within one token)."""
        self._stop.set()
        try:
            while True:
                self._pieces.append(next(pieces))
        except StopIteration as done:
            return done.value if isinstance(done.value, GenerationResult) else None
        except Exception:  # noqa: BLE001 - a backend that cannot finish cleanly: the text so far stands
            return None

    def _interrupted_result(self) -> GenerationResult:
        """What a stream cut short made, when its backend could not say: the pieces stand for tokens."""
        seconds = time.perf_counter() - (self._started or time.perf_counter())
        return GenerationResult(self.model_id, self.text, 0, len(self._pieces), seconds, "interrupted")

    def __repr__(self) -> str:
        state = "done" if self.result else ("streaming" if self._iterator else "not started")
        return f"<TextStream {self.model_id!r} {state}>"


# -- what a model can be asked: text (chat mode) or vectors (embed mode), checked before it loads ----

def text_model(spec: ModelSpec) -> ModelSpec:
    """``spec``, when its model generates text; else a :class:`GenerationError` saying what it is."""
    if spec.backend == "loader":
        raise WrongModelKind(f"{spec.id!r} is a model of kind {spec.kind!r} loaded by {spec.loader}: it has no "
                              f"text interface; use it directly: with manager.use({spec.id!r}) as m: m.model(...)",
                              model_id=spec.id)
    if spec.mode == "embed":
        raise WrongModelKind(f"{spec.id!r} is an embedding model (mode: embed): it makes vectors, not text; "
                              f"use manager.embed({spec.id!r}, texts), or register the file again with "
                              "mode: chat under another id", model_id=spec.id)
    return spec


def checked_texts(spec: ModelSpec, texts: str | Sequence[str]) -> list[str]:
    """The texts of an ``embed`` call as a list (one string is one text), for an embed-mode model."""
    if spec.backend == "loader":
        text_model(spec)  # says what it is
    if spec.mode != "embed":
        raise WrongModelKind(f"{spec.id!r} is a chat model (mode: {spec.mode}): it has no embeddings; register "
                              "an embedding model with mode: embed (the same file may be registered twice)",
                              model_id=spec.id)
    if isinstance(texts, str):
        texts = [texts]
    if isinstance(texts, (bytes, bytearray)) or not isinstance(texts, Sequence):
        raise InvalidGenerationParameters(f"texts is a string or a list of strings, got {type(texts).__name__}",
                                          model_id=spec.id)
    if len(texts) > MAX_TEXTS:
        raise InvalidGenerationParameters(f"{len(texts)} texts in one call; at most {MAX_TEXTS}: split them",
                                          model_id=spec.id)
    for index, text in enumerate(texts):
        if not isinstance(text, str) or not text.strip():
            raise InvalidGenerationParameters(f"text {index} must be a non-empty string, got {brief(text)}",
                                              model_id=spec.id)
    return list(texts)


def checked_params(spec: ModelSpec, backend: Backend, params: Mapping[str, Any]) -> GenerationParams:
    """``spec``'s generation settings, then ``params``, validated; loads nothing.

    Raises :class:`InvalidGenerationParameters` for a value out of range, or
    a parameter ``backend`` does not take (naming close matches and the valid ones).
    """
    generation = GenerationParams.build(spec.generation, params)
    if generation.extra:
        check_extra_params(generation, backend.extra_params(spec), spec.id, backend.name)
    return generation
