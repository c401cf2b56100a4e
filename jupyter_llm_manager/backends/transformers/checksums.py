"""Telling whether a file is still what was written, cheaply: size, modification time and sampled blocks.

When a file is written, :func:`file_facts` records its size, its modification
time, a SHA-256 of all of it and a SHA-256 of :data:`SAMPLED_BLOCKS` blocks of
:data:`BLOCK_BYTES` spread evenly from its first byte to its last.
:func:`file_problem` checks the size and the sampled blocks (a few MB read,
whatever the file's size); only when the modification time differs is the
whole file read again. So an overwrite in place of the same size is found even
when the modification time was put back, unless it falls entirely between two
samples (less than 1/1024 of the file), and any change is found once the
modification time moved.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

__all__ = ["BLOCK_BYTES", "SAMPLED_BLOCKS", "file_facts", "file_problem", "sampled_digest", "whole_digest"]

SAMPLED_BLOCKS = 1024
BLOCK_BYTES = 4096
_CHUNK = 8 * 1024 * 1024


def whole_digest(path: Path) -> str:
    """SHA-256 of the whole file."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sampled_digest(path: Path, size: int) -> str:
    """SHA-256 of the size and of blocks spread evenly over the file (all of it when it is small)."""
    digest = hashlib.sha256(str(size).encode())
    with path.open("rb") as handle:
        if size <= SAMPLED_BLOCKS * BLOCK_BYTES:
            digest.update(handle.read(size))
            return digest.hexdigest()
        last = size - BLOCK_BYTES
        for index in range(SAMPLED_BLOCKS):
            handle.seek(index * last // (SAMPLED_BLOCKS - 1))
            digest.update(handle.read(BLOCK_BYTES))
    return digest.hexdigest()


def file_facts(path: Path) -> dict[str, Any]:
    """What a manifest records of a file just written."""
    stat = path.stat()
    return {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sampled": sampled_digest(path, stat.st_size),
            "sha256": whole_digest(path)}


def file_problem(path: Path, facts: Any) -> str | None:
    """What is wrong with ``path`` compared with the ``facts`` recorded when it was written; None when nothing.

    A file whose modification time changed is read whole; when it is intact,
    the caller may record the new time so that the next check is cheap again.
    """
    if not isinstance(facts, dict) or not {"bytes", "mtime_ns", "sampled", "sha256"} <= facts.keys():
        return f"{path.name} has no checksum (the copy was made by an older version)"
    try:
        stat = path.stat()
    except FileNotFoundError:
        return f"{path.name} is missing"
    if stat.st_size != facts["bytes"]:
        return f"{path.name} has {stat.st_size:,} bytes instead of the {facts['bytes']:,} written"
    if sampled_digest(path, stat.st_size) != facts["sampled"]:
        return f"{path.name} was changed after it was written (its checksum differs)"
    if stat.st_mtime_ns != facts["mtime_ns"] and whole_digest(path) != facts["sha256"]:
        return f"{path.name} was changed after it was written (its checksum differs)"
    return None
