"""The member server's application: requests from other members, read within bounds, answered off the loop.

A body larger than :data:`~.bounds.MAX_MESSAGE`, nested deeper than
:data:`~.bounds.MAX_DEPTH`, slower than :data:`~.bounds.BODY_S` or not a
JSON object gets a 4xx answer, never an exception in the server; the
member's answer runs in a worker thread (it may free memory), so the server
keeps answering other connections meanwhile. Connections from another user
are closed at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from .bounds import BODY_S, HEADER_S, MAX_DEPTH, MAX_MESSAGE, peer_is_this_user

__all__ = ["BadBody", "bounded_json", "member_app", "same_user_protocol"]

log = logging.getLogger(__name__)


class BadBody(ValueError):
    """A request body that is not read: ``status`` says why (413 too large, 408 too slow, 400 not JSON)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def member_app(handle: Callable[[dict[str, Any]], dict[str, Any]], routes: Sequence[Any] = ()) -> Starlette:
    """The application: ``POST /machine/<op>`` for the requests between members, and ``routes``."""

    async def machine(request: Request) -> JSONResponse:
        try:
            body = await bounded_json(request, MAX_MESSAGE)
        except BadBody as error:
            return JSONResponse({"ok": False, "error": str(error)}, status_code=error.status)
        body["op"] = request.path_params["op"]
        try:
            answer = await run_in_threadpool(handle, body)
        except Exception as error:  # noqa: BLE001 - one bad request never stops the server, and says why
            log.info("answering a request from another kernel (%s) failed: %s", body["op"], error)
            return JSONResponse({"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}, status_code=500)
        return JSONResponse({"ok": True, **answer})

    return Starlette(routes=[Route("/machine/{op}", machine, methods=["POST"]), *routes])


async def bounded_json(request: Request, limit: int) -> dict[str, Any]:
    """The request's body as a JSON object: at most ``limit`` bytes, :data:`~.bounds.MAX_DEPTH` deep, sent
    within :data:`~.bounds.BODY_S` seconds (:class:`BadBody` otherwise)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise BadBody(413, f"a request is at most {limit} bytes")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > limit:
                raise BadBody(413, f"a request is at most {limit} bytes")

    try:
        await asyncio.wait_for(read(), BODY_S)
    except asyncio.TimeoutError:
        raise BadBody(408, f"the request's body did not arrive within {BODY_S:g} s") from None
    if _depth(body) > MAX_DEPTH:
        raise BadBody(400, f"a request is nested at most {MAX_DEPTH} deep")
    try:
        found = json.loads(body.decode()) if body else {}
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise BadBody(400, "a request is a JSON object") from None
    if not isinstance(found, dict):
        raise BadBody(400, "a request is a JSON object")
    return found


def _depth(body: bytes | bytearray) -> int:
    """How deep the JSON in ``body`` nests (brackets outside strings), counted in one pass."""
    depth = deepest = 0
    inside = escaped = False
    for byte in body:
        if inside:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                inside = False
        elif byte == 0x22:
            inside = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


def same_user_protocol() -> type[H11Protocol]:
    """uvicorn's HTTP protocol, closing a connection whose peer runs as another user, and one that does not send
    a whole request line and headers within :data:`~.bounds.HEADER_S` of connecting or of starting a request
    (uvicorn bounds a body's wait and an idle keep-alive, not a request that trickles in or never comes: enough
    of those would take every connection the server accepts)."""

    class SameUser(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            connection = transport.get_extra_info("socket")
            if connection is not None and not peer_is_this_user(connection):
                log.warning("a process of another user connected to this kernel's socket; it was closed")
                transport.close()
                return
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._deadline is None and self._between_requests():
                self._arm()  # a new request begins: its line and headers have HEADER_S to arrive
            super().data_received(data)
            if not self._between_requests():
                self._disarm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._deadline = self.loop.call_later(HEADER_S, self._too_slow)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self._between_requests() and not self.transport.is_closing():
                log.info("a connection to this kernel's socket sent no whole request within %g s; it was closed",
                         HEADER_S)
                self.transport.close()

    return SameUser
