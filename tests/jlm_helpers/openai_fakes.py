"""An ASGI app served by a real uvicorn on a thread, and a fake :class:`Answering` whose streams a test steers."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from jlm_helpers.conditions import until
from jupyter_llm_manager.generation import FinishReason, GenerationResult
from jupyter_llm_manager.manager.sharing.answering import AnswerRequest


@contextlib.contextmanager
def running(app: Any) -> Iterator[str]:
    """``app`` served by uvicorn on a free loopback port, on a thread; yields its base URL."""
    import uvicorn

    listener = socket.create_server(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=1))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="test-uvicorn", daemon=True)
    thread.start()
    try:
        assert until(lambda: server.started, timeout=15), "uvicorn did not start"
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(10)
        listener.close()


class FakeStream:
    """Pieces a test lets out: all at once, or one per ``release()`` when ``gated``; ``fail`` raises after the
    pieces; ``endless`` makes pieces until stopped. Records ``stop()`` and ``close()``."""

    def __init__(self, pieces: Sequence[str] = ("Hel", "lo"), *, finish: FinishReason = "stop", gated: bool = False,
                 fail: BaseException | None = None, endless: bool = False) -> None:
        self.pieces = list(pieces)
        self.finish = finish
        self.fail = fail
        self.endless = endless
        self.result: GenerationResult | None = None
        self.stopped = threading.Event()
        self.closed = threading.Event()
        self.made = 0
        self._gate = threading.Semaphore(0) if gated else None

    def release(self, count: int = 1) -> None:
        assert self._gate is not None
        for _ in range(count):
            self._gate.release()

    def __iter__(self) -> Iterator[str]:
        index = 0
        while self.endless or index < len(self.pieces):
            if self._gate is not None:
                while not self._gate.acquire(timeout=0.01):
                    if self.stopped.is_set():
                        break
            if self.stopped.is_set():
                self.result = self._result("interrupted")
                return
            yield self.pieces[index % len(self.pieces)]
            self.made += 1
            index += 1
        if self.fail is not None:
            raise self.fail
        self.result = self._result(self.finish)

    def _result(self, finish: FinishReason) -> GenerationResult:
        return GenerationResult("fake", "".join(self.pieces), 7, self.made, 0.5, finish, max_new_tokens=16)

    def stop(self) -> None:
        self.stopped.set()

    def close(self) -> None:
        self.closed.set()


class FakeAnswering:
    """Answers from :class:`FakeStream` objects: ``next_stream`` (else a fresh one); ``raises`` from ``stream()``."""

    def __init__(self) -> None:
        self.requests: list[AnswerRequest] = []
        self.next_stream: FakeStream | None = None
        self.raises: BaseException | None = None
        self.embedded: list[tuple[str, list[str]]] = []
        self.start_gate: threading.Event | None = None  # set: stream() returns only once the gate opens

    def models(self) -> list[dict[str, Any]]:
        return [{"id": "fake", "object": "model", "created": 0, "owned_by": "tests"}]

    def stream(self, request: AnswerRequest) -> FakeStream:
        self.requests.append(request)
        if self.start_gate is not None:
            assert self.start_gate.wait(30), "the test never opened the start gate"
        if self.raises is not None:
            raise self.raises
        return self.next_stream or FakeStream()

    def embed(self, model: str, texts: Sequence[str], requester: str,
              extension: Mapping[str, Any] | None = None) -> list[list[float]]:
        if self.raises is not None:
            raise self.raises
        self.embedded.append((model, list(texts)))
        return [[0.1 * index, -0.25, 1 / 3] for index, _ in enumerate(texts)]
