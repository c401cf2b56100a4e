"""How managers reach each other: a Unix socket per manager, answered by a thread of its own.

The request reaches the holder's listener thread, not its kernel's shell
channel, so it is answered within a second even while the kernel runs a
cell. One JSON line asks, one JSON line answers. The socket lives in a
private folder (mode 0700), so only this user can connect. Requests and
answers are small and bounded; a malformed one gets an error answer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...errors import log_failure

__all__ = ["MAX_MESSAGE", "Listener", "ask"]

log = logging.getLogger(__name__)

#: The largest request or answer, in bytes: a few model keys and a sentence.
MAX_MESSAGE = 64 * 1024

Handler = Callable[[dict[str, Any]], dict[str, Any]]


class Listener:
    """Serves one manager's socket on a daemon thread until :meth:`stop`."""

    def __init__(self, handle: Handler) -> None:
        self._handle = handle
        self._folder = Path(tempfile.mkdtemp(prefix="llm-manager-"))
        self.address = str(self._folder / "socket")
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.address)
        os.chmod(self.address, 0o600)
        self._server.listen(16)
        self._server.settimeout(0.5)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, name="llm-manager-listener", daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._server.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # closed
            with connection:
                connection.settimeout(2.0)
                try:
                    request = _read(connection)
                    answer = self._answer(request)
                    connection.sendall(json.dumps(answer).encode() + b"\n")
                except (OSError, ValueError) as error:
                    log.debug("a cooperation request was not read or answered: %s", error)

    def _answer(self, request: Any) -> dict[str, Any]:
        if not isinstance(request, dict) or not isinstance(request.get("op"), str):
            return {"ok": False, "error": "a request is a mapping with an op"}
        try:
            return {"ok": True, **self._handle(request)}
        except Exception as error:  # noqa: BLE001 - the listener survives a bad request, and says why
            log_failure(log, f"answering a request from another kernel ({request.get('op')})", error)
            return {"ok": False, "error": f"{type(error).__name__}: {error}"[:500]}

    def stop(self) -> None:
        self._stop.set()
        self._server.close()
        if self._thread is not threading.current_thread():
            self._thread.join(5)
        shutil.rmtree(self._folder, ignore_errors=True)


def ask(address: str, request: dict[str, Any], timeout: float = 2.0) -> dict[str, Any] | None:
    """Send one request to another manager; its answer, or ``None`` when it did not answer in ``timeout`` s."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(address)
            client.sendall(json.dumps(request).encode() + b"\n")
            answer = _read(client)
    except (OSError, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _read(connection: socket.socket) -> Any:
    """One JSON line, at most :data:`MAX_MESSAGE` bytes."""
    data = b""
    while not data.endswith(b"\n"):
        chunk = connection.recv(4096)
        if not chunk:
            break
        data += chunk
        if len(data) > MAX_MESSAGE:
            raise ValueError("message too long")
    return json.loads(data.decode())
