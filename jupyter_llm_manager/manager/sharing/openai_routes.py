"""The OpenAI-compatible routes over any :class:`~.answering.Answering`: models, chat, completions, embeddings.

Bodies are read within bounds (:func:`~..cooperation.member_app.bounded_json`)
and checked field by field (:mod:`.openai_requests`); a mistake is a 400 in
OpenAI's error shape, naming the field. The answering part's blocking calls
run off the event loop: a generation is iterated on its own thread
(``llm-answer``), which hands the pieces to the loop in order.

Streaming (server-sent events): the first chunk gives the role, then one chunk
per piece, then the chunk with the finish reason and the result (extension),
the usage chunk when ``stream_options.include_usage`` asks, and
``data: [DONE]``. While no piece has come for ``heartbeat_s``, a comment line
(``: keep-alive``) goes out, so a client can tell a slow holder (loading a
model, queued behind another request) from a dead one. An error within the
first ``heartbeat_s`` is an HTTP error answer; after that the stream has begun,
so an error is one ``data: {"error": ...}`` event and the stream ends without
``[DONE]``. A client that goes away stops its generation within a token
(``stop()``, then ``close()`` on the generation's thread).

Bounds: ``max_running`` generations at once (503 with ``Retry-After``
beyond), ``max_seconds`` per generation (stopped after it, its finish reason
``stop``, the result's ``interrupted``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ...errors import LLMManagerError
from ...generation import GenerationResult
from ..cooperation.member_app import BadBody, bounded_json
from .answering import Answering, PieceStream
from .openai_answers import Answer, embeddings, error_body, error_status
from .openai_requests import BadRequest, TextRequest, chat_request, completion_request, embedding_request

__all__ = ["HEARTBEAT_S", "HTTP_ERRORS", "MAX_REQUEST", "openai_routes"]

log = logging.getLogger(__name__)

#: Seconds without a piece before a keep-alive comment goes out on a stream.
HEARTBEAT_S = 5.0
#: The largest request body, in bytes: a long chat, not a file upload.
MAX_REQUEST = 8 * 1024 * 1024
#: What a client is told to wait before asking again when every generation slot is taken.
RETRY_AFTER_S = 2

Item = tuple[str, Any]  # ("piece", text), ("end", result) or ("error", exception)


def openai_routes(answering: Answering, *, heartbeat_s: float = HEARTBEAT_S, max_running: int | None = None,
                  max_seconds: float | None = None, max_body: int = MAX_REQUEST) -> list[Route]:
    """``GET /v1/models``, ``POST /v1/chat/completions``, ``/v1/completions`` and ``/v1/embeddings``."""
    routes = _Routes(answering, heartbeat_s, _Slots(max_running), max_seconds, max_body)
    return [Route("/v1/models", routes.models, methods=["GET"]),
            Route("/v1/models/{model:path}", routes.model, methods=["GET"]),
            Route("/v1/chat/completions", routes.chat, methods=["POST"]),
            Route("/v1/completions", routes.completions, methods=["POST"]),
            Route("/v1/embeddings", routes.embeddings, methods=["POST"])]


async def _http_error(request: Request, error: Exception) -> Response:
    """A path that is no route (404) or a method the route does not take (405), in OpenAI's error shape."""
    status = getattr(error, "status_code", 404)
    headers = getattr(error, "headers", None)
    path = request.url.path[:200]
    if status == 405:
        allowed = (headers or {}).get("Allow", "")
        message = f"{request.method} is not allowed on {path}" + (f": use {allowed}" if allowed else "")
    else:
        message = (f"no route {path}: the routes are GET /v1/models, POST /v1/chat/completions, "
                   "POST /v1/completions and POST /v1/embeddings")
    return JSONResponse(error_body(message, code="not_found" if status == 404 else "method_not_allowed"),
                        status_code=status, headers=headers)


#: Starlette's ``exception_handlers`` for what no route answers: OpenAI's error object instead of plain text.
HTTP_ERRORS = {404: _http_error, 405: _http_error}


def error_answer(error: BaseException) -> JSONResponse:
    """The HTTP answer to an error: 400 for a bad request, else by the project's exception type."""
    if isinstance(error, BadBody):
        return JSONResponse(error_body(str(error)), status_code=error.status)
    if isinstance(error, BadRequest):
        return JSONResponse(error_body(str(error), param=error.param), status_code=400)
    if isinstance(error, _Busy):
        return JSONResponse(error_body(str(error), "ResourceNotAvailableError"), status_code=503,
                            headers={"Retry-After": str(RETRY_AFTER_S)})
    status = error_status(error)
    headers = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else None
    return JSONResponse(_error_event(error), status_code=status, headers=headers)


def _error_event(error: BaseException) -> dict[str, Any]:
    """OpenAI's error object for an error of the answering part (one that is not the project's is logged: a bug)."""
    if not isinstance(error, LLMManagerError):
        log.error("answering a request failed", exc_info=error)
    return error_body(str(error) or type(error).__name__, type(error).__name__)


class _Starting:
    """A generation being started on a worker thread for a request that may be cancelled meanwhile (the server
    stopping): a stream that starts after that is stopped and closed, and the slot given back, on the thread
    that started it (the event loop may be gone by then)."""

    def __init__(self, start: Callable[[], PieceStream], give_back: Callable[[], None]) -> None:
        self._start = start
        self._give_back = give_back
        self._lock = threading.Lock()
        self._abandoned = False
        self._outcome: PieceStream | BaseException | None = None

    def start(self) -> PieceStream:
        try:
            stream = self._start()
        except BaseException as error:
            with self._lock:
                self._outcome, abandoned = error, self._abandoned
            if abandoned:
                self._give_back()
            raise
        with self._lock:
            self._outcome, abandoned = stream, self._abandoned
        if abandoned:
            self._end(stream)
        return stream

    def abandon(self) -> None:
        """The request was cancelled: end what started (or will), give the slot back once."""
        with self._lock:
            self._abandoned, outcome = True, self._outcome
        if isinstance(outcome, BaseException):
            self._give_back()
        elif outcome is not None:
            threading.Thread(target=self._end, args=(outcome,), name="llm-answer-end", daemon=True).start()

    def _end(self, stream: PieceStream) -> None:
        try:
            stream.stop()
            stream.close()
        except Exception as error:  # noqa: BLE001 - a worker thread: logged, never raised
            log.info("ending an answer whose request was cancelled failed: %s", error)
        finally:
            self._give_back()


class _Busy(Exception):
    """Every generation slot is taken."""


class _Slots:
    """At most ``limit`` generations at once (``None``: no limit); a slot is given back by the generation's thread,
    when it has really ended, not when its client left."""

    def __init__(self, limit: int | None) -> None:
        self._limit = limit
        self._semaphore = threading.BoundedSemaphore(limit) if limit else None

    def take(self) -> Callable[[], None]:
        """A slot (:class:`_Busy` when none is free); returns the function that gives it back."""
        semaphore = self._semaphore
        if semaphore is None:
            return lambda: None
        if not semaphore.acquire(blocking=False):
            raise _Busy(f"{self._limit} generations are running, the most this server runs at once: try again")
        return semaphore.release


class _Pump:
    """A blocking :class:`PieceStream` iterated on its own thread; its pieces, end or error handed to the loop in
    order. The stream is closed on that thread once it ends (closing it from another would race its iteration)."""

    def __init__(self, stream: PieceStream, done: Callable[[], None]) -> None:
        self._stream = stream
        self._done = done
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[Item] = asyncio.Queue()
        self.stopped = False

    def start(self) -> None:
        threading.Thread(target=self._run, name="llm-answer", daemon=True).start()

    def _run(self) -> None:
        try:
            for piece in self._stream:
                if piece:
                    self._hand(("piece", piece))
            self._hand(("end", self._stream.result))
        except BaseException as error:  # noqa: BLE001 - every end reaches the client, as an answer or an event
            self._hand(("error", error))
        finally:
            try:
                self._stream.close()
            finally:
                self._done()

    def _hand(self, item: Item) -> None:
        try:
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)
        except RuntimeError:  # the loop is closed: nobody is reading any more
            pass

    async def next(self, timeout: float) -> Item | None:
        """The next item, or ``None`` when none came within ``timeout`` seconds."""
        try:
            return await asyncio.wait_for(self._queue.get(), max(timeout, 0.0))
        except asyncio.TimeoutError:
            return None

    def keep_alive(self) -> str:
        """The comment that says the stream lives: what it waits for, where it says (its place in a queue)."""
        waiting = getattr(self._stream, "waiting", "")
        note = " ".join(waiting.split())[:300] if isinstance(waiting, str) and waiting else "keep-alive"
        return f": {note}\n\n"

    def stop(self) -> None:
        """End the generation within a token (once)."""
        if not self.stopped:
            self.stopped = True
            self._stream.stop()


class _Routes:
    def __init__(self, answering: Answering, heartbeat_s: float, slots: _Slots, max_seconds: float | None,
                 max_body: int) -> None:
        self._answering = answering
        self._heartbeat_s = heartbeat_s
        self._slots = slots
        self._max_seconds = max_seconds
        self._max_body = max_body

    async def models(self, request: Request) -> Response:
        try:
            found = await run_in_threadpool(self._answering.models)
        except Exception as error:  # noqa: BLE001 - an answer, never a dropped connection
            return error_answer(error)
        return JSONResponse({"object": "list", "data": found})

    async def model(self, request: Request) -> Response:
        wanted = request.path_params["model"]
        try:
            found = await run_in_threadpool(self._answering.models)
        except Exception as error:  # noqa: BLE001
            return error_answer(error)
        match = next((model for model in found if model.get("id") == wanted), None)
        if match is None:
            return JSONResponse(error_body(f"no model {wanted!r} here", "ModelNotFoundError", "model"), status_code=404)
        return JSONResponse(match)

    async def chat(self, request: Request) -> Response:
        return await self._text(request, chat=True)

    async def completions(self, request: Request) -> Response:
        return await self._text(request, chat=False)

    async def embeddings(self, request: Request) -> Response:
        try:
            asked = embedding_request(await bounded_json(request, self._max_body))
            give_back = self._slots.take()
        except (BadBody, BadRequest, _Busy) as error:
            return error_answer(error)
        try:
            vectors = await run_in_threadpool(self._answering.embed, asked.model, asked.texts, _requester(request),
                                              asked.extension)
        except Exception as error:  # noqa: BLE001
            return error_answer(error)
        finally:
            give_back()
        return JSONResponse(embeddings(asked.model, vectors, as_base64=asked.base64))

    async def _text(self, request: Request, *, chat: bool) -> Response:
        read = chat_request if chat else completion_request
        try:
            asked = read(await bounded_json(request, self._max_body), _requester(request))
            give_back = self._slots.take()
        except (BadBody, BadRequest, _Busy) as error:
            return error_answer(error)
        starting = _Starting(partial(self._answering.stream, asked.answer), give_back)
        try:
            stream = await run_in_threadpool(starting.start)
        except asyncio.CancelledError:  # the server stops while the answer starts: it ends once it has started
            starting.abandon()
            raise
        except Exception as error:  # noqa: BLE001
            give_back()
            return error_answer(error)
        pump = _Pump(stream, give_back)
        pump.start()
        answer = Answer(asked.answer.model, chat=chat)
        clock = _Clock(self._max_seconds, self._heartbeat_s)
        if not asked.stream:
            return await self._whole(request, pump, answer, clock)
        try:
            first = await clock.next(pump)
        except BaseException:  # cancelled (the server stopping) before the stream began: the generation ends too
            pump.stop()
            raise
        if first is not None and first[0] == "error":
            return error_answer(first[1])
        return StreamingResponse(self._events(request, pump, answer, asked, clock, first),
                                 media_type="text/event-stream", headers={"Cache-Control": "no-cache"})

    async def _whole(self, request: Request, pump: _Pump, answer: Answer, clock: _Clock) -> Response:
        """The non-streaming answer: every piece, then one object (an error is an HTTP error)."""
        pieces: list[str] = []
        try:
            while True:
                item = await clock.next(pump)
                if item is not None and item[0] == "error":
                    return error_answer(item[1])
                if item is not None and item[0] == "end":
                    return JSONResponse(answer.whole("".join(pieces), item[1]))
                if item is not None:
                    pieces.append(item[1])
                if await request.is_disconnected():
                    pump.stop()
        finally:
            if not clock.ended:
                pump.stop()

    async def _events(self, request: Request, pump: _Pump, answer: Answer, asked: TextRequest, clock: _Clock,
                      first: Item | None) -> AsyncIterator[str]:
        """The server-sent events of one stream; a client that leaves stops the generation."""
        try:
            opening = answer.opening()
            if opening is not None:
                yield _event(opening)
            item = first
            while True:
                if item is None:
                    yield pump.keep_alive()
                elif item[0] == "piece":
                    yield _event(answer.piece(item[1]))
                elif item[0] == "error":
                    yield _event(_error_event(item[1]))
                    return
                else:
                    result: GenerationResult | None = item[1]
                    yield _event(answer.closing(result))
                    if asked.include_usage:
                        yield _event(answer.usage_chunk(result))
                    yield "data: [DONE]\n\n"
                    return
                if await request.is_disconnected():
                    return
                item = await clock.next(pump)
        finally:
            if not clock.ended:
                pump.stop()


class _Clock:
    """The waits of one generation: each at most a heartbeat, the generation stopped at its wall limit."""

    def __init__(self, max_seconds: float | None, heartbeat_s: float) -> None:
        self._deadline = None if max_seconds is None else time.monotonic() + max_seconds
        self._heartbeat_s = heartbeat_s
        self.ended = False  # the generation's end (or error) was received

    async def next(self, pump: _Pump) -> Item | None:
        wait = self._heartbeat_s
        if self._deadline is not None and not pump.stopped:
            left = self._deadline - time.monotonic()
            if left <= 0:
                log.info("a generation ran past the server's limit and was stopped")
                pump.stop()
            else:
                wait = min(wait, left)
        item = await pump.next(wait)
        if item is not None and item[0] != "piece":
            self.ended = True
        return item


def _event(data: dict[str, Any]) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def _requester(request: Request) -> str:
    """Who asks, for the holder's events: the client's program, from its User-Agent."""
    agent = request.headers.get("user-agent", "").split(" ")[0][:80]
    return f"a client ({agent})" if agent.isprintable() and agent else "a client"
