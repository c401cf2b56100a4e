"""Generations on leased instances: the lease around the backend call, and the events around it.

``generate`` and ``stream`` share this one sequence: acquire a lease (loading
or waiting for room as needed), emit ``generation_started``, run the backend,
release the lease, emit ``generation_finished`` (with the tokens, the speed,
or why it stopped).
"""

from __future__ import annotations

import threading
import time
import weakref
from collections.abc import Callable, Sequence

from ..events import EventBus
from ..generation import GenerationParams, GenerationResult, Prompt
from .handles import TextStream
from .state import Ticket

__all__ = ["Runs"]


class Runs:
    """Runs generations for the manager; :class:`TextStream` calls back into it."""

    def __init__(self, bus: EventBus, acquire: Callable[[str, float | str | None], Ticket]) -> None:
        self._bus = bus
        self._acquire = acquire
        self._streams: weakref.WeakSet[TextStream] = weakref.WeakSet()
        self._streams_lock = threading.Lock()

    def acquire(self, model_id: str, wait: float | str | None) -> Ticket:
        """A lease on ``model_id``, waiting for room up to ``wait`` (``None``: the wait_timeout setting)."""
        return self._acquire(model_id, wait)

    def generate(self, model_id: str, prompt: Prompt, params: GenerationParams, *, raw: bool,
                 wait: float | str | None) -> GenerationResult:
        ticket = self._acquire(model_id, wait)
        self.started(ticket.canonical)
        result: GenerationResult | None = None
        error: BaseException | None = None
        try:
            result = ticket.instance.backend.generate(ticket.loaded, prompt, params, model_id=model_id, raw=raw)
            return result
        except BaseException as failure:
            error = failure
            raise
        finally:
            ticket.release()
            self.finished(ticket.canonical, result, error)

    def embed(self, model_id: str, texts: Sequence[str], *, wait: float | str | None) -> list[list[float]]:
        """One vector per text, on a leased instance (an embed-mode model)."""
        ticket = self._acquire(model_id, wait)
        started = time.perf_counter()
        try:
            vectors = ticket.instance.backend.embed(ticket.loaded, texts, model_id=model_id)
        finally:
            ticket.release()
        self._bus.emit("generation_finished", ticket.canonical, seconds=time.perf_counter() - started,
                       message=f"{len(vectors)} vectors")
        return vectors

    def stream(self, model_id: str, prompt: Prompt, params: GenerationParams, *, raw: bool,
               wait: float | str | None) -> TextStream:
        stream = TextStream(self, model_id, prompt, params, raw=raw, wait=wait)
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

    def started(self, canonical: str) -> None:
        self._bus.emit("generation_started", canonical)

    def finished(self, canonical: str, result: GenerationResult | None, error: BaseException | None) -> None:
        if result is not None:
            message = f"{result.completion_tokens} tokens, {result.tokens_per_second:.1f} tok/s"
            if result.finish_reason == "interrupted":
                message += ", interrupted"
            self._bus.emit("generation_finished", canonical, seconds=result.seconds, message=message)
            for warning in result.warnings:
                self._bus.emit("warning", canonical, message=warning)
        else:
            text = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
            self._bus.emit("generation_finished", canonical, message=text)
