"""A real OpenAI-compatible server for the tests: llm-katan, started on 127.0.0.1 and stopped after.

Also a small fault-injecting proxy that answers the first N generation
requests with an HTTP error, then forwards to the real server.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from jlm_helpers.processes import free_port, stop, wait_for_http

if TYPE_CHECKING:
    from typing_extensions import Self


@contextlib.contextmanager
def llm_katan(tmp: Path, *, model: Path | None = None, name: str = "tiny", key: str | None = None,
              extra: tuple[str, ...] = (), timeout: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve ``model`` (or echo) with llm-katan; yields (base URL ending in /v1, process).

    Skips the calling test where llm-katan is not installed; one that is installed and does not start
    fails it, with the end of the server's log.
    """
    executable = shutil.which("llm-katan", path=os.path.dirname(sys.executable)) or shutil.which("llm-katan")
    if executable is None:
        pytest.skip("llm-katan is not installed (pip install 'llm-katan[transformers]')")
    port = free_port()
    command = [executable, "--port", str(port), "--host", "127.0.0.1", "--served-model-name", name,
               "--stats-file", str(tmp / "katan-stats.json"), "--log-level", "WARNING", "--no-quantize", *extra]
    command += ["--model", str(model), "--backend", "transformers"] if model else ["--model", name, "--backend", "echo"]
    if key:
        command += ["--validate-keys", "--api-keys", f"openai={key}"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HOME": str(tmp)}
    headers = {"Authorization": f"Bearer {key or 'x'}"}
    with serving("llm-katan", command, tmp / f"katan-{port}.log", port, headers, env, timeout) as served:
        yield served


@contextlib.contextmanager
def serving(what: str, command: list[str], log_path: Path, port: int, headers: dict[str, str],
            env: dict[str, str] | None, timeout: float) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start a server process, wait until ``/v1/models`` answers (else fail with its log), stop it after."""
    log = log_path.open("w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        failure = wait_for_http(urllib.request.Request(f"{base}/models", headers=headers), server, timeout)
        if failure:
            pytest.fail(f"{what} {failure}: {log_path.read_text()[-1500:]}")
        yield base, server
    finally:
        stop(server)
        log.close()


@contextlib.contextmanager
def llama_server(tmp: Path, model: Path, *, name: str = "smollm2",
                 timeout: float = 90) -> Iterator[tuple[str, subprocess.Popen]]:
    """Serve a GGUF file with llama.cpp's own OpenAI-compatible server; yields (base URL, process).

    Skips the calling test where llama-cpp-python was installed without its ``[server]`` extra.
    """
    import importlib.util

    if importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("sse_starlette") is None:
        pytest.skip("llama-cpp-python[server] is not installed")
    port = free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--model_alias", name,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
               "--n_threads", str(len(os.sched_getaffinity(0)))]
    with serving("llama_cpp.server", command, tmp / f"llama-server-{port}.log", port, {}, None, timeout) as served:
        yield served


def kill_in_the_middle_of_a_stream(stream, server: subprocess.Popen) -> float:
    """Iterate ``stream``, killing ``server`` after its second piece; returns the seconds it took to fail.

    The stream must end with :class:`GenerationError` (the caller checks the message), never hang.
    """
    import signal
    import time

    from jupyter_llm_manager import GenerationError

    started = time.monotonic()
    with pytest.raises(GenerationError, match="broke in the middle of the answer"):
        for index, _ in enumerate(stream):
            if index == 1:
                os.killpg(server.pid, signal.SIGKILL)
    return time.monotonic() - started


class FaultProxy:
    """Forwards to ``target``; the first ``failures`` POSTs get ``status`` instead."""

    def __init__(self, target: str, failures: int, status: int = 429, port: int = 0) -> None:
        self.target = target.rstrip("/")
        self.failures = failures
        self.status = status
        self.requests: list[tuple[str, str]] = []
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                proxy.forward(self, None)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                proxy.requests.append(("POST", self.path))
                if proxy.failures > 0:
                    proxy.failures -= 1
                    payload = json.dumps({"error": {"message": "injected failure", "type": "test"}}).encode()
                    self.send_response(proxy.status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                    return
                proxy.forward(self, body)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def forward(self, handler: http.server.BaseHTTPRequestHandler, body: bytes | None) -> None:
        path = handler.path.removeprefix("/v1")
        headers = {k: v for k, v in handler.headers.items() if k.lower() in ("authorization", "content-type")}
        request = urllib.request.Request(self.target + path, data=body, headers=headers,
                                         method="POST" if body is not None else "GET")
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                status, payload, kind = answer.status, answer.read(), answer.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            status, payload, kind = error.code, error.read(), "application/json"
        handler.send_response(status)
        handler.send_header("Content-Type", kind)
        handler.send_header("Content-Length", str(len(payload)))
        handler.end_headers()
        handler.wfile.write(payload)

    def __enter__(self) -> Self:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()
        self.server.server_close()
