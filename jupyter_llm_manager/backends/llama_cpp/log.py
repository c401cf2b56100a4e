"""llama.cpp's log: routed to our logger, and read during a load for the buffers it allocated.

llama.cpp reports each buffer it allocates ("CUDA0 model buffer size = 123.4 MiB");
those lines are the measured footprint of a load, per device and part.
"""

from __future__ import annotations

import ctypes
import logging
import re
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

__all__ = ["BUFFER", "BUFFER_MARK", "captured_log", "footprint_of", "reported_buffers", "route_log"]

log = logging.getLogger(__name__)

BUFFER = re.compile(r"(\S+)\s+(model|KV|compute|output|LoRA) buffer size\s*=\s*([\d.]+)\s*MiB")
BUFFER_MARK = " buffer size"  # in every line BUFFER matches: a substring test spares the regex ~2,200 lines a load

_log_lock = threading.Lock()
_capture: list[list[str]] = []  # the lines of the loads capturing now
_routed: list[Any] = []  # our callback, kept alive while llama.cpp holds it


def route_log(llama_cpp: Any) -> None:
    """Send llama.cpp's log to this module's logger (once per process)."""
    with _log_lock:
        if _routed:
            return

        @llama_cpp.llama_log_callback
        def receive(level: int, text: bytes, user_data: Any) -> None:
            line = text.decode("utf-8", "replace").rstrip("\n")
            with _log_lock:
                for lines in _capture:
                    lines.append(line)
            log.debug("llama.cpp: %s", line)

        _routed.append(receive)
        llama_cpp.llama_log_set(receive, ctypes.c_void_p(0))


@contextmanager
def captured_log() -> Iterator[list[str]]:
    """The lines llama.cpp logs while the block runs (a load), in a list that fills as they come."""
    lines: list[str] = []
    with _log_lock:
        _capture.append(lines)
    try:
        yield lines
    finally:
        with _log_lock:
            _capture.remove(lines)


def reported_buffers(lines: Sequence[str]) -> list[tuple[str, str, int]]:
    """``(device, part, bytes)`` for each buffer llama.cpp reported allocating."""
    found = []
    for line in lines:
        match = BUFFER.search(line) if BUFFER_MARK in line else None
        if match:
            name, part, mib = match.groups()
            gpu = re.match(r"CUDA(\d+)", name)
            found.append((f"cuda:{gpu.group(1)}" if gpu else "cpu", part, int(float(mib) * 2**20)))
    return found


def footprint_of(buffers: Sequence[tuple[str, str, int]]) -> dict[str, int]:
    """Bytes per device, summed over the reported buffers."""
    footprint: dict[str, int] = {}
    for device, _, size in buffers:
        footprint[device] = footprint.get(device, 0) + size
    return footprint
