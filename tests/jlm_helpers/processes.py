"""Servers the tests start: a free port, waiting until one answers, stopping it."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(request: urllib.request.Request | str, server: subprocess.Popen, timeout: float) -> str | None:
    """Poll until the server answers; returns why it did not (exited, timed out), or None."""
    deadline = time.monotonic() + timeout
    while True:
        if server.poll() is not None:
            return f"exited with code {server.returncode}"
        try:
            with urllib.request.urlopen(request, timeout=2):
                return None
        except urllib.error.HTTPError:
            return None  # it answers: an HTTP error is an answer
        except OSError:
            if time.monotonic() > deadline:
                return f"did not answer within {timeout:.0f} s"
            time.sleep(0.2)


def stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(5)
