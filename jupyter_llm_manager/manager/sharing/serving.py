"""``jupyter-llm-manager serve``: the OpenAI-compatible endpoint for other tools, over a manager of its own.

The server is a member of the machine like a kernel: its manager reads the
user's configuration file (so the config's models are known), takes part in
the machine's cooperative budget, and unloads its own copies after
``keep_alive`` (5 minutes unless the file sets it, as Ollama does).

Security: it listens on loopback unless ``host`` says otherwise; every request
needs the bearer token made at start (``secrets.token_urlsafe``), compared in
constant time; the URL and token are written to
``<jupyter runtime dir>/llm_manager_serve.json``, created with mode 0600 (never
readable by another user, not even for a moment) and removed at exit.
Requests are bounded: body size, :data:`MAX_RUNNING` generations at once,
:data:`MAX_SECONDS` per generation.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import json
import logging
import os
import secrets
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from ...errors import ConfigurationError, ModelNotFoundError
from ...generation import GenerationParams
from ...reports import MachineModel
from ..facade import FROM_CONFIG, LLMManager, borrowing_of
from .answering import AnswerRequest, PieceStream
from .openai_answers import error_body
from .openai_routes import HTTP_ERRORS, openai_routes

__all__ = ["MAX_RUNNING", "MAX_SECONDS", "RUNTIME_FILE", "BearerToken", "ManagerAnswering", "Served",
           "runtime_path", "serve", "serve_manager"]

log = logging.getLogger(__name__)

#: The runtime file's name, in Jupyter's runtime folder.
RUNTIME_FILE = "llm_manager_serve.json"
#: Generations answered at once; more get 503 with Retry-After.
MAX_RUNNING = 8
#: The longest one generation may run before it is stopped, in seconds.
MAX_SECONDS = 600.0
#: ``serve``'s keep-alive when the configuration file sets none.
SERVE_KEEP_ALIVE = "5m"
_PARAM_NAMES = frozenset(GenerationParams.__dataclass_fields__) - {"extra"}


class NotRegisteredHere(ModelNotFoundError):
    """An id another member of the machine holds, that this server's configuration does not register."""

    def __init__(self, model_id: str, holder: str) -> None:
        super().__init__(model_id)
        message = (f"{model_id!r} is loaded by {holder}, which does not lend it (share is off there), and this "
                   "server does not know how it was registered: add it to the configuration file "
                   "(jupyter-llm-manager list shows what the server knows)")
        self.args = (message,)


class ManagerAnswering:
    """An :class:`~.answering.Answering` over an :class:`LLMManager`: its registered models, and those loaded by
    the machine's other members (listed under their holders' ids)."""

    def __init__(self, manager: LLMManager) -> None:
        self._manager = manager
        self._borrowing = borrowing_of(manager)  # ids only other members know are asked of their copies
        self._created = int(time.time())

    def models(self) -> list[dict[str, Any]]:
        found = {model_id: self._model(model_id, "jupyter_llm_manager") for model_id in self._manager.ids()}
        for held in self._elsewhere():
            found.setdefault(held.model_id, self._model(held.model_id, held.notebook))
        return list(found.values())

    def stream(self, request: AnswerRequest) -> PieceStream:
        held = self._held_elsewhere(request.model)
        if held is not None:  # an id only another member registered: asked of its copy, by its share key
            return self._borrowing.forward(held.share, request.model, request, self._manager.wait_timeout)
        exact = request.extension.get("params")
        params = {**request.params, **({key: value for key, value in exact.items() if key in _PARAM_NAMES}
                                       if isinstance(exact, Mapping) else {})}
        return self._manager.stream(request.model, request.prompt, raw=request.raw, **params)

    def embed(self, model: str, texts: Sequence[str], requester: str,
              extension: Mapping[str, Any] | None = None) -> list[list[float]]:
        held = self._held_elsewhere(model)
        if held is not None:
            return self._borrowing.forward_embed(held.share, model, texts, self._manager.wait_timeout)
        return self._manager.embed(model, list(texts))

    def _model(self, model_id: str, owner: str) -> dict[str, Any]:
        return {"id": model_id, "object": "model", "created": self._created, "owned_by": owner}

    def _elsewhere(self) -> list[Any]:
        return [model for model in self._manager.machine().models if not model.this]

    def _held_elsewhere(self, model_id: str) -> MachineModel | None:
        """The copy another member holds under ``model_id``, when this server does not register that id; a clear
        404 when that copy is not lent (its manager does not share)."""
        if model_id in self._manager.ids():
            return None
        held = [model for model in self._elsewhere() if model.model_id == model_id]
        lent = next((model for model in held if model.share), None)
        if held and lent is None:
            raise NotRegisteredHere(model_id, held[0].notebook)
        return lent


class BearerToken:
    """ASGI middleware: every HTTP request carries ``Authorization: Bearer <token>`` (401 in OpenAI's shape)."""

    def __init__(self, app: ASGIApp, token: str) -> None:
        self._app = app
        self._expected = token.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not self._allowed(scope):
            body = error_body("a bearer token is required: use the token `jupyter-llm-manager serve` printed "
                              f"(also in {runtime_path()})", code="invalid_api_key")
            await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": "Bearer"})(scope, receive, send)
            return
        await self._app(scope, receive, send)

    def _allowed(self, scope: Scope) -> bool:
        """``Bearer <token>``, the scheme's name in any case (HTTP's rule), the token exactly."""
        given = next((value for name, value in scope.get("headers", ()) if name == b"authorization"), b"")
        scheme, _, token = given.strip().partition(b" ")
        return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self._expected)


def serve_app(answering: ManagerAnswering, token: str) -> ASGIApp:
    """The application: the OpenAI routes over ``answering``, behind the token."""
    routes = openai_routes(answering, max_running=MAX_RUNNING, max_seconds=MAX_SECONDS)
    return BearerToken(Starlette(routes=routes, exception_handlers=HTTP_ERRORS), token)


def serve_manager() -> LLMManager:
    """The server's manager: the kernel's configuration and built-in model, ``keep_alive`` 5 minutes unless the
    configuration file sets it."""
    from ...config.files import find_config_path, load_config
    from ..kernel import configured_manager

    path = find_config_path(None)
    given = load_config(path).settings_given if path else frozenset()
    keep_alive = FROM_CONFIG if "keep_alive" in given else SERVE_KEEP_ALIVE
    return configured_manager(preload=True, keep_alive=keep_alive)


def runtime_path() -> Path:
    """Where the running server's URL and token are written."""
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / RUNTIME_FILE


@dataclass(frozen=True)
class Served:
    """What a client needs: the base URL (ending ``/v1``) and the token."""

    url: str
    token: str
    path: Path


def serve(host: str = "127.0.0.1", port: int = 0, *, announce: Callable[[Served], None] = lambda served: None,
          manager: Callable[[], LLMManager] = serve_manager) -> None:
    """Serve until Ctrl-C or SIGTERM, then close the manager and remove the runtime file. ``port`` 0 picks a
    free one; ``announce`` is told the URL and token once the server listens."""
    if threading.current_thread() is not threading.main_thread():
        raise ConfigurationError("serve() stops on Ctrl-C or SIGTERM, which only the main thread receives: call it "
                                 "from the main thread, or run `jupyter-llm-manager serve` as a process of its own")
    token = secrets.token_urlsafe(32)
    # Until uvicorn takes the signals over (and after it gives them back, raising a caught one again), both end
    # the server the same way; asyncio's own Ctrl-C handler, which only cancels its task, is never installed.
    previous = {number: signal.signal(number, _interrupt) for number in (signal.SIGINT, signal.SIGTERM)}
    try:
        with _listening(host, port) as listener:
            shown = f"[{host}]" if ":" in host else host
            served = Served(f"http://{shown}:{listener.getsockname()[1]}/v1", token, runtime_path())
            owned = manager()
            try:
                _serve_until_stopped(serve_app(ManagerAnswering(owned), token), listener,
                                     lambda: _announce(served, announce))
            finally:
                try:
                    _remove_runtime_file(served)
                finally:
                    owned.close()
    except KeyboardInterrupt:
        log.info("serve stopped")
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)


def _serve_until_stopped(app: ASGIApp, listener: socket.socket, started: Callable[[], None]) -> None:
    """Run uvicorn on ``listener``; ``started`` runs once it listens with its signal handlers in place, so a
    signal sent as soon as the runtime file appears stops the server cleanly."""
    import uvicorn

    class Server(uvicorn.Server):
        async def startup(self, sockets: list[socket.socket] | None = None) -> None:
            await super().startup(sockets)
            if self.started and not self.should_exit:
                started()

    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2,
                            limit_concurrency=4 * MAX_RUNNING + 16)
    Server(config).run(sockets=[listener])


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def _listening(host: str, port: int) -> Iterator[socket.socket]:
    """A listening socket on ``host:port`` (0: a free port), bound before the server starts, so its port is known."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        listener = socket.create_server((host, port), family=family)
    except (OSError, OverflowError) as error:
        raise ConfigurationError(f"cannot listen on {host} port {port}: {error}; choose another --port, or leave it "
                                 "out for a free one") from None
    if not ipaddress.ip_address(listener.getsockname()[0]).is_loopback:
        log.warning("listening on %s: other machines can connect (each request still needs the token)", host)
    try:
        yield listener
    finally:
        listener.close()


def _announce(served: Served, announce: Callable[[Served], None]) -> None:
    """Write the runtime file, mode 0600 from its creation (a new name, then renamed into place), then tell
    ``announce``."""
    folder = served.path.parent
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    staged = folder / f".{RUNTIME_FILE}.{os.getpid()}.{secrets.token_hex(4)}"
    data = json.dumps({"url": served.url, "token": served.token, "pid": os.getpid()}).encode()
    handle = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        os.write(handle, data)
    finally:
        os.close(handle)
    os.replace(staged, served.path)
    announce(served)


def _remove_runtime_file(served: Served) -> None:
    """Remove the runtime file when it is still this server's (another server's is left alone)."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(served.path.read_text()).get("token") == served.token:
            served.path.unlink()
