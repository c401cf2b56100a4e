"""The ``async`` forms of the manager's calls, for asyncio code (a kernel's top-level ``await`` included).

Each runs its blocking counterpart in a worker thread; ``astream`` pumps a
stream's pieces through a queue, and cancelling it stops the generation.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, Protocol

from ...generation import GenerationResult, Prompt
from ..generations import TextStream
from ..handles import ModelHandle

__all__ = ["AsyncCalls"]


class _Calls(Protocol):
    def load(self, model_id: str, **options: Any) -> ModelHandle: ...
    def generate(self, model_id: str, prompt: Prompt, **options: Any) -> GenerationResult: ...
    def stream(self, model_id: str, prompt: Prompt, **options: Any) -> TextStream: ...


class AsyncCalls:
    """The ``async`` forms of the manager's calls, for asyncio code (a kernel's ``await`` included)."""

    async def aload(self: _Calls, model_id: str, **options: Any) -> ModelHandle:
        """``await manager.aload(id)`` — load in a worker thread."""
        return await asyncio.to_thread(self.load, model_id, **options)

    async def agenerate(self: _Calls, model_id: str, prompt: Prompt, **options: Any) -> GenerationResult:
        """``await manager.agenerate(id, prompt)`` — generate in a worker thread."""
        return await asyncio.to_thread(self.generate, model_id, prompt, **options)

    def astream(self: _Calls, model_id: str, prompt: Prompt, **options: Any) -> AsyncIterator[str]:
        """``async for piece in manager.astream(id, prompt)``; cancelling stops the generation."""
        return _pump(self.stream(model_id, prompt, **options))


async def _pump(stream: TextStream) -> AsyncIterator[str]:
    """A stream's pieces for ``async for``, produced in a worker thread; cancelling stops it."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[object] = asyncio.Queue()
    end = object()

    def pump() -> None:
        try:
            for piece in stream:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting side, which raises it
            loop.call_soon_threadsafe(pieces.put_nowait, error)
        finally:
            loop.call_soon_threadsafe(pieces.put_nowait, end)

    worker = loop.run_in_executor(None, pump)
    try:
        while (item := await pieces.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield str(item)
    finally:
        stream.stop()
        await asyncio.shield(worker)
