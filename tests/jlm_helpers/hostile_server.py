"""A tiny OpenAI-compatible server on 127.0.0.1 that misbehaves on purpose, for the hostile-server tests.

What it does with a request is chosen by the model the request names, so one server serves every
behaviour: ``HostileServer(listed=...)`` lists ids on ``/v1/models``; ``server.behave[name]`` is a
function ``(handler, body) -> None`` that writes the whole answer. The helpers below build the
usual ones. ``server.sent[name]`` counts the chunks written for each model.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing_extensions import Self

Behaviour = Callable[["Handler", dict[str, Any]], None]


def chunk(content: Any = "x", *, finish: str | None = None, **choice: Any) -> dict[str, Any]:
    """One ``chat.completion.chunk`` with ``content`` in its delta (any JSON value, on purpose)."""
    return {"id": "c", "object": "chat.completion.chunk", "model": "m",
            "choices": [{"index": 0, "delta": {"content": content}, "finish_reason": finish, **choice}]}


class Handler(http.server.BaseHTTPRequestHandler):
    """Answers as the server's behaviour for the requested model says."""

    server: _Server
    model = ""

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        if self.path.rstrip("/") != "/v1/models":
            self.json(404, {"error": {"message": "no such path"}})
        elif self.server.owner.models is not None:
            self.server.owner.models(self, {})
        else:
            self.json(200, {"object": "list", "data": [{"id": name, "object": "model"}
                                                       for name in self.server.listed]})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        owner, self.model = self.server.owner, str(body.get("model"))
        owner.requests[self.model] += 1
        if self.model not in owner.behave:
            self.json(404, {"error": {"message": f"no model {self.model}"}})
            return
        try:
            owner.behave[self.model](self, body)
        except (BrokenPipeError, ConnectionResetError):
            owner.hung_up.set()  # the client stopped reading and closed the connection

    def json(self, status: int, value: Any) -> None:
        """Answer ``value`` as JSON (a ``str`` or ``bytes`` is sent as it is)."""
        payload = value if isinstance(value, bytes) else (value if isinstance(value, str) else json.dumps(value)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Retry-After", "0")
        self.end_headers()
        self.wfile.write(payload)

    def start_events(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()

    def event(self, data: Any) -> None:
        """Write one server-sent event (a dict as JSON, a string as it is) and count it."""
        text = data if isinstance(data, str) else json.dumps(data)
        self.wfile.write(f"data: {text}\n\n".encode())
        self.wfile.flush()
        self.server.owner.sent[self.model] += 1


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    owner: HostileServer
    listed: list[str]


class HostileServer:
    """Serves ``listed`` ids; ``behave[model]`` answers each POST naming that model."""

    def __init__(self, listed: Iterable[str] = ()) -> None:
        self.behave: dict[str, Behaviour] = {}
        self.models: Behaviour | None = None  # answers GET /v1/models instead of the list of ``listed``
        self.sent: Counter[str] = Counter()
        self.requests: Counter[str] = Counter()
        self.hung_up = threading.Event()  # set when a client closed the connection in the middle of an answer
        self.stopping = threading.Event()  # set when the test is over: answers that wait stop waiting
        self.server = _Server(("127.0.0.1", 0), Handler)
        self.server.owner = self
        self.server.listed = list(listed)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def serve(self, name: str, behaviour: Behaviour) -> None:
        """List ``name`` and answer it with ``behaviour``."""
        self.server.listed.append(name)
        self.behave[name] = behaviour

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()


# -- behaviours -------------------------------------------------------------------------------------

ENOUGH = 20_000  # what "without end" sends at most, so that a client that never stops fails a test, not hangs it


def endless(piece: Any = "x") -> Behaviour:
    """Streams chunks with ``piece`` as content until the client goes away, whatever ``max_tokens`` says."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.start_events()
        for _ in range(ENOUGH):
            handler.event(chunk(piece))

    return behaviour


def keep_alive(every_s: float) -> Behaviour:
    """Sends a keep-alive comment every ``every_s`` seconds (for 10 s at most) and never an answer."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.start_events()
        for _ in range(int(10 / every_s)):
            if handler.server.owner.stopping.wait(every_s):
                return
            handler.wfile.write(b": still thinking\n\n")
            handler.wfile.flush()

    return behaviour


def endless_body(kind: str) -> Behaviour:
    """Sends an answer (``"events"``: one event line; ``"json"``: a JSON body) that does not end: 64 MiB of it."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream" if kind == "events" else "application/json")
        handler.end_headers()
        handler.wfile.write(b'data: {"choices": [{"delta": {"content": "' if kind == "events" else
                            b'{"choices": [{"message": {"content": "')
        for _ in range(1024):
            handler.wfile.write(b"x" * 65536)

    return behaviour


def events(*sent: Any, done: bool = True) -> Behaviour:
    """Streams ``sent`` (chunks, or raw strings), then ``[DONE]`` unless ``done`` is false; then closes."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.start_events()
        for data in sent:
            handler.event(data)
        if done:
            handler.event("[DONE]")
        handler.close_connection = True

    return behaviour


def chunked_cut(*sent: Any) -> Behaviour:
    """Streams ``sent`` with HTTP/1.1 chunked framing, then closes without the last chunk (a cut connection)."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.protocol_version = "HTTP/1.1"
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        for data in sent:
            payload = f"data: {json.dumps(data)}\n\n".encode()
            handler.wfile.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        handler.wfile.flush()
        handler.close_connection = True

    return behaviour


def answer(value: Any, status: int = 200) -> Behaviour:
    """Answers any request with ``value`` as a JSON body (a non-streaming answer)."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.json(status, value)

    return behaviour


def after(seconds: float, then: Behaviour) -> Behaviour:
    """Answers like ``then`` after ``seconds`` (a slow server), or at once when the test is over."""
    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        handler.server.owner.stopping.wait(seconds)
        then(handler, body)

    return behaviour


def failing(times: int, then: Behaviour, status: int = 503) -> Behaviour:
    """Answers HTTP ``status`` to the first ``times`` requests, then like ``then``."""
    left = [times]

    def behaviour(handler: Handler, body: dict[str, Any]) -> None:
        if left[0] > 0:
            left[0] -= 1
            handler.json(status, {"error": {"message": "overloaded, try again"}})
        else:
            then(handler, body)

    return behaviour


def completion(text: Any = "hello", finish: Any = "stop", **fields: Any) -> dict[str, Any]:
    """A non-streaming ``chat.completion`` body with ``text`` as its message content."""
    return {"id": "c", "object": "chat.completion", "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}, **fields}
