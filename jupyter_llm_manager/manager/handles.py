"""What the manager hands out: handles that never keep a model alive on their own.

- :class:`ModelHandle` (from ``load``) holds an id and a weak reference to the
  manager; it stays valid across unloads.
- :class:`Lease` (from ``use``) gives ``.model`` and ``.tokenizer`` inside a
  ``with`` block; the model is never evicted while a lease is held, and the
  lease forgets the model when the block ends.
- :class:`TextStream` (from ``stream``) yields text pieces; ``.result`` holds
  the final :class:`~jupyter_llm_manager.generation.GenerationResult`, also
  after an interrupt (``finish_reason="interrupted"``).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LLMManagerError, ModelNotFoundError
from ..generation import GenerationParams, GenerationResult, Prompt, StreamInterrupted

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..backends.base import LoadedModel
    from ..config.spec import ModelSpec
    from ..reports import StatusRow, UnloadReport
    from .facade import LLMManager
    from .state import Ticket

__all__ = ["Lease", "ModelHandle", "TextStream"]


class ModelHandle:
    """A model id bound to its manager; holds no model object."""

    def __init__(self, manager: LLMManager, model_id: str) -> None:
        self.id = model_id
        self._manager = weakref.ref(manager)

    @property
    def manager(self) -> LLMManager:
        manager = self._manager()
        if manager is None:
            raise LLMManagerError(f"the manager of {self.id!r} is gone")
        return manager

    def status(self) -> StatusRow:
        return self.manager.row(self.id)

    def use(self, **options: Any) -> Lease:
        return self.manager.use(self.id, **options)

    def generate(self, prompt: Prompt, **params: Any) -> GenerationResult:
        return self.manager.generate(self.id, prompt, **params)

    def unload(self, **options: Any) -> UnloadReport | None:
        return self.manager.unload(self.id, **options)

    def __repr__(self) -> str:
        manager = self._manager()
        state: str
        try:
            state = manager.row(self.id).state if manager is not None else "manager gone"
        except ModelNotFoundError:
            state = "unregistered"
        return f"<ModelHandle {self.id!r}: {state}>"


class Lease:
    """``with manager.use(id) as lm``: the loaded model, protected from eviction."""

    def __init__(self, model_id: str, acquire: Callable[[], Ticket], spec: Callable[[], ModelSpec]) -> None:
        self.id = model_id
        self._acquire = acquire
        self._spec = spec
        self._ticket: Ticket | None = None

    def __enter__(self) -> Self:
        if self._ticket is not None:
            raise LLMManagerError("this lease is already held; call use() again for another")
        self._ticket = self._acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()

    @property
    def held(self) -> bool:
        """Whether the lease is held now (inside the ``with`` block)."""
        return self._ticket is not None

    @property
    def loaded(self) -> LoadedModel:
        ticket = self._ticket
        if ticket is None:
            raise LLMManagerError(f"the lease on {self.id!r} is not held: use it inside `with manager.use(...)`")
        return ticket.loaded

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def spec(self) -> ModelSpec:
        return self._spec()

    def __repr__(self) -> str:
        return f"<Lease {self.id!r} {'held' if self._ticket is not None else 'released'}>"


class GenerationRuns(Protocol):
    """What a :class:`TextStream` needs from the manager: a lease, and the generation events."""

    def acquire(self, model_id: str, wait: float | str | None) -> Ticket: ...

    def started(self, canonical: str) -> None: ...

    def finished(self, canonical: str, result: GenerationResult | None, error: BaseException | None) -> None: ...


class TextStream:
    """Text pieces of one generation, as they are made. Iterate once.

    ``stop()`` ends it from another thread within one token. Closing it early
    (``close()``, ``break``, an interrupt) releases the model for other uses at
    once: the stream holds its iterator weakly, so the iterator a ``for`` loop
    drops on ``break`` is closed there and then, not at the next garbage collection.
    """

    def __init__(self, runs: GenerationRuns, model_id: str, prompt: Prompt, params: GenerationParams, *,
                 raw: bool, wait: float | str | None = None) -> None:
        self.model_id = model_id
        self.result: GenerationResult | None = None
        self._runs = runs
        self._prompt = prompt
        self._params = params
        self._raw = raw
        self._wait = wait
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
        ticket = self._runs.acquire(self.model_id, self._wait)
        self._started = time.perf_counter()
        self._runs.started(ticket.canonical)
        pieces = None
        error: BaseException | None = None
        try:
            pieces = ticket.instance.backend.stream(ticket.loaded, self._prompt, self._params, model_id=self.model_id,
                                                    raw=self._raw, stop=self._stop)
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
            ticket.release()
            self._runs.finished(ticket.canonical, self.result, error)

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
