"""How members reach each other: an HTTP server on each member's private Unix socket, and the client.

The server is an existing ASGI server (uvicorn, with a small starlette app)
on a thread of its own, so a request is answered within a moment even while
the kernel runs a cell, and it survives any message and any client: bodies
are bounded in size, nesting and time, connections are served concurrently
with per-connection limits, only a process of this user may connect (the
socket's folder is private, and the peer's uid is checked where the system
says it), and the server starts again if it ever stops by itself. Requests
to make room are ``POST /machine/<op>`` with a JSON body; the same server
carries more routes where this member lends its models (``routes``).
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ...errors import log_failure
from .bounds import MAX_CONNECTIONS, MAX_MESSAGE

__all__ = ["Listener", "UnixConnection", "ask"]

log = logging.getLogger(__name__)

#: A server that stops by itself is started again after this long (doubling, up to 5 s).
_RESTART_S = 0.1

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Listener:
    """Serves one member's socket on a daemon thread until :meth:`stop` (see the module docstring)."""

    def __init__(self, handle: Handler, routes: Sequence[Any] = ()) -> None:
        self._handle = handle
        self._routes = list(routes)  # more starlette routes on the same server (borrowed generations)
        self._folder = Path(tempfile.mkdtemp(prefix="llm-manager-"))  # mode 0700: only this user gets in
        self.address = str(self._folder / "socket")
        self._pid = os.getpid()
        self._socket = _listening(self.address)
        self._stop = threading.Event()
        self._server: Any = None
        self._thread = threading.Thread(target=self._serve, name="llm-manager-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        """The thread: run the server, and run it again if it stops without being asked to."""
        pause = _RESTART_S
        while not self._stop.is_set():
            try:
                self._run_once()
            except Exception as error:  # noqa: BLE001 - the listener must survive, and say so in one line
                log_failure(log, "the listener for other kernels stopped; it starts again", error)
            if self._stop.wait(pause):
                return
            pause = min(pause * 2, 5.0)
            self._socket = _listening(self.address)  # the server closed the old one

    def _run_once(self) -> None:
        import uvicorn

        from .member_app import member_app, same_user_protocol

        config = uvicorn.Config(member_app(self._handle, self._routes), log_config=None, access_log=False,
                                lifespan="off", http=same_user_protocol(), limit_concurrency=MAX_CONNECTIONS,
                                timeout_keep_alive=5, h11_max_incomplete_event_size=16 * 1024,
                                timeout_graceful_shutdown=1)
        self._server = server = uvicorn.Server(config)
        if self._stop.is_set():
            return
        server.run(sockets=[self._socket])

    def stop(self) -> None:
        """Stop serving and remove the socket (only in the process that made it: a forked child leaves it)."""
        self._stop.set()
        server = self._server
        if server is not None:
            server.should_exit = True
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        if os.getpid() == self._pid:
            self._socket.close()
            shutil.rmtree(self._folder, ignore_errors=True)


def _listening(address: str) -> socket.socket:
    """A Unix socket bound at ``address`` (mode 0600), listening."""
    Path(address).unlink(missing_ok=True)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    os.chmod(address, 0o600)
    server.listen(MAX_CONNECTIONS)
    return server


# -- the client ----------------------------------------------------------------------------------------

class UnixConnection(http.client.HTTPConnection):
    """An HTTP connection to another member's socket (``timeout``: seconds for each connect, send and read)."""

    def __init__(self, address: str, timeout: float) -> None:
        super().__init__("member", timeout=timeout)
        self._address = address

    def connect(self) -> None:
        connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        connection.settimeout(self.timeout)
        connection.connect(self._address)
        self.sock = connection


def ask(address: str, request: dict[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    """Send one request (``request["op"]`` and its fields) to another member; its answer, or ``None`` when it
    did not answer (a whole answer) within ``timeout`` seconds."""
    if not address or timeout <= 0:
        return None
    deadline = time.monotonic() + timeout
    connection = UnixConnection(address, timeout)
    try:
        connection.request("POST", f"/machine/{request.get('op', '')}", body=json.dumps(request).encode(),
                           headers={"Content-Type": "application/json"})
        response = connection.getresponse()
        body = b""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or connection.sock is None:
                return None
            connection.sock.settimeout(remaining)
            chunk = response.read(4096)
            if not chunk:
                break
            body += chunk
            if len(body) > MAX_MESSAGE:
                return None
        answer = json.loads(body.decode())
    except (OSError, ValueError, http.client.HTTPException):
        return None
    finally:
        connection.close()
    return answer if isinstance(answer, dict) else None
