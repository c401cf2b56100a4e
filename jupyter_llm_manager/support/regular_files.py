"""Reading a user's file without being stalled or flooded by it: regular files only, and only so many bytes.

A FIFO, a device or a socket named where a file is expected (an
``adapter_config.json``, a safetensors file, a configuration) would block a
plain ``open`` or ``read`` forever; :func:`open_regular` opens without
blocking and refuses anything but a regular file, checked on the open
descriptor, so nothing can be swapped in between a check and the open.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any

__all__ = ["NOT_REGULAR", "NotRegularFile", "TooLarge", "load_json", "open_regular", "read_descriptor",
           "read_regular"]

NOT_REGULAR = "it is not a regular file (a FIFO, a device or a folder)"
_CHUNK = 1 << 16


class NotRegularFile(OSError):
    """The path names something other than a regular file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(errno.EINVAL, NOT_REGULAR, os.fspath(path))


class TooLarge(ValueError):
    """A file is larger than what it may hold to be read."""


def open_regular(path: str | os.PathLike[str]) -> int:
    """A descriptor of ``path`` opened for reading, checked to be a regular file once open (never blocks)."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_BINARY", 0)
    descriptor = os.open(path, flags)
    if not stat.S_ISREG(os.fstat(descriptor).st_mode):
        os.close(descriptor)
        raise NotRegularFile(path)
    return descriptor


def read_regular(path: str | os.PathLike[str], limit: int) -> bytes:
    """The bytes of the regular file ``path``; :class:`TooLarge` past ``limit`` bytes (at most that is read)."""
    descriptor = open_regular(path)
    try:
        return read_descriptor(descriptor, limit, os.fspath(path))
    finally:
        os.close(descriptor)


def read_descriptor(descriptor: int, limit: int, name: str) -> bytes:
    """What is left to read from ``descriptor``, in chunks (memory grows with the file, not with ``limit``);
    :class:`TooLarge` once it passes ``limit`` bytes."""
    chunks, total = [], 0
    while chunk := os.read(descriptor, _CHUNK):
        total += len(chunk)
        if total > limit:
            raise TooLarge(f"{name} is larger than {limit:,} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def load_json(path: str | os.PathLike[str], limit: int) -> Any:
    """The JSON value of a regular file of at most ``limit`` bytes.

    ``ValueError`` (one line) for text that is not JSON, too deeply nested
    JSON included; ``OSError`` for a file that cannot be read or is not a
    regular file.
    """
    raw = read_regular(path, limit)
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError(f"{Path(path).name} nests its JSON too deeply") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"{Path(path).name} is not UTF-8 text ({error.reason})") from None
    except json.JSONDecodeError as error:
        raise ValueError(f"{Path(path).name} is not valid JSON ({error.msg}, line {error.lineno})") from None
