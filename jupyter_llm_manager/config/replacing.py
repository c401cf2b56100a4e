"""Replacing a file only while it still holds what was merged, and never while someone is writing it.

An editor saving in place truncates the file and writes it through a
descriptor it keeps open, maybe pausing between parts (a slow disk, a
stalled process). A save that reads the first part, believes it (it parses,
and stays the same for a while) and renames its merged version into place
loses the rest: the editor goes on writing into the file that was just
replaced. Two guards close this:

- **Writers.** On Linux a read lease (``F_SETLEASE``) is refused while any
  process has the file open for writing, so :func:`being_written` can ask
  the kernel whether a write is under way, in microseconds, for a file this
  user owns; a save waits until none is.
- **The replace itself.** :func:`replace_if_holding` swaps the new version
  and the file (``renameat2(RENAME_EXCHANGE)``), then checks that what it
  swapped out is the very file it merged (same inode, same SHA-256 of its
  content) and that nobody has it open for writing; if not, it swaps back
  at once, so the other writer's file is in place again, and the caller
  merges again. Where the exchange is not available, the same checks run
  just before a plain rename.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import hashlib
import logging
import os
import signal
import time
from pathlib import Path
from typing import Any

from ..support.regular_files import NotRegularFile, open_regular

__all__ = ["being_written", "content_digest", "replace_if_holding", "wait_for_writers"]

log = logging.getLogger(__name__)

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_POLL_S = 0.01
_READ_CHUNK = 1 << 20


def being_written(descriptor: int) -> bool:
    """Whether any process has the file open for writing (``False`` where the kernel cannot say).

    A read lease is taken and given back at once. While it is held, another
    process opening the file for writing would make the kernel signal this
    one: the signal is set to SIGURG, which is ignored unless handled.
    """
    if not hasattr(fcntl, "F_SETLEASE"):
        return False
    try:
        if hasattr(fcntl, "F_SETSIG"):
            fcntl.fcntl(descriptor, fcntl.F_SETSIG, signal.SIGURG)
        fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_RDLCK)
    except OSError as error:
        return error.errno == errno.EAGAIN  # EACCES (not our file), EINVAL (no leases here): cannot tell
    fcntl.fcntl(descriptor, fcntl.F_SETLEASE, fcntl.F_UNLCK)
    return False


def wait_for_writers(path: Path, deadline: float) -> bool:
    """Wait (until ``deadline``, monotonic) while a process has ``path`` open for writing; ``False`` if it still does."""
    while True:
        try:
            descriptor = open_regular(path)
        except (FileNotFoundError, NotRegularFile):
            return True  # nothing to wait for: reading it says what it is
        try:
            if not being_written(descriptor):
                return True
        finally:
            os.close(descriptor)
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)


def content_digest(descriptor: int) -> str:
    """The SHA-256 of the whole content of an open file, read from its start."""
    digest, offset = hashlib.sha256(), 0
    while chunk := os.pread(descriptor, _READ_CHUNK, offset):
        digest.update(chunk)
        offset += len(chunk)
    return digest.hexdigest()


def replace_if_holding(path: Path, new: Path, digest: str | None) -> bool:
    """Put the file ``new`` at ``path`` if ``path`` still holds content of SHA-256 ``digest`` and nobody is
    writing it (``digest`` ``None``: if there is no file); ``False``, with ``path`` as it was, otherwise.

    ``new`` is gone either way (in place, or removed).
    """
    try:
        held = open_regular(path)
    except FileNotFoundError:
        held = None
    if held is None:
        return _create(path, new) if digest is None else _discard(new)
    try:
        if digest is None or not _holds(held, path, digest):
            return _discard(new)
        if not _exchange(new, path):
            if not _holds(held, path, digest):  # no exchange here: the same checks, just before a plain rename
                return _discard(new)
            os.replace(new, path)
            return True
        if _holds(held, new, digest):  # what was swapped out is what was merged, and nobody writes it
            new.unlink()
            return True
        log.info("%s was being written while it was saved: the other writer's file is put back", path)
        _exchange(new, path)
        return _discard(new)
    finally:
        os.close(held)


def _holds(held: int, where: Path, digest: str) -> bool:
    """Whether the open file ``held`` is the file at ``where``, nobody writes it, and its content is ``digest``."""
    try:
        same = os.stat(where).st_ino == os.fstat(held).st_ino
    except FileNotFoundError:
        return False
    return same and not being_written(held) and content_digest(held) == digest


def _exchange(first: Path, second: Path) -> bool:
    """Swap two names atomically (``renameat2``, Linux 3.15+); ``False`` where this system cannot."""
    function = _renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(code, os.strerror(code), str(second))


_function: list[Any] = []


def _renameat2() -> Any:
    if not _function:
        try:
            _function.append(ctypes.CDLL(None, use_errno=True).renameat2)
        except (AttributeError, OSError):
            _function.append(None)
    return _function[0]


def _create(path: Path, new: Path) -> bool:
    """Put ``new`` at ``path`` only if no file is there yet (a link refuses an existing name)."""
    try:
        os.link(new, path)
    except FileExistsError:
        return _discard(new)
    except OSError:  # no hard links on this file system: the nearest thing
        if path.exists():
            return _discard(new)
        os.replace(new, path)
        return True
    new.unlink()
    return True


def _discard(new: Path) -> bool:
    new.unlink(missing_ok=True)
    return False
