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
- **The replace itself.** :func:`replace_if_holding` renames the new version
  over the file only if the file is still the one merged (same inode, same
  SHA-256 of its content) and nobody has it open for writing; then it looks
  at the replaced file once more, through a descriptor opened before the
  rename: an edit that landed there in between (its writer opened it just
  before the rename) is handed back, to be merged again.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import os
import signal
import time
from pathlib import Path

from ..support.regular_files import NotRegularFile, open_regular

try:
    import fcntl
except ImportError:  # Windows: no leases; the content check alone guards the replace
    fcntl = None  # type: ignore[assignment]

__all__ = ["being_written", "content_digest", "replace_if_holding", "wait_for_writers"]

log = logging.getLogger(__name__)

_POLL_S = 0.01
_LATE_WAIT_S = 2.0  # how long a writer of the replaced file is waited for, at least
_READ_CHUNK = 1 << 20


def being_written(descriptor: int) -> bool:
    """Whether any process has the file open for writing (``False`` where the kernel cannot say).

    A read lease is taken and given back at once. While it is held, another
    process opening the file for writing would make the kernel signal this
    one: the signal is set to SIGURG, which is ignored unless handled.
    """
    if fcntl is None or not hasattr(fcntl, "F_SETLEASE"):
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


def replace_if_holding(path: Path, new: Path, digest: str | None, deadline: float) -> bool | bytes:
    """Rename the file ``new`` over ``path`` if ``path`` still holds content of SHA-256 ``digest`` and nobody is
    writing it (``digest`` ``None``: if there is no file); ``False``, with ``path`` as it was, otherwise.

    After the rename, the replaced file is looked at once more through a
    descriptor opened before it: a writer that had it open (it opened it
    just before the rename) is waited for (until ``deadline``, then as long
    again), and when its content is no longer ``digest`` that content is
    returned, for the caller to merge again: the edit went to the replaced
    file, and only the caller can bring it back. ``new`` is gone either way.
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
        os.replace(new, path)
        if not being_written(held) and content_digest(held) == digest:
            return True
        if not _writers_done(held, max(deadline, time.monotonic() + _LATE_WAIT_S)):
            log.warning("%s: another program still writes the file this save replaced; what it writes now is "
                        "merged as it is", path)
        log.info("%s was written while it was saved: merging that edit again", path)
        return _content(held)
    finally:
        os.close(held)


def _holds(held: int, where: Path, digest: str) -> bool:
    """Whether the open file ``held`` is the file at ``where``, nobody writes it, and its content is ``digest``."""
    try:
        same = os.stat(where).st_ino == os.fstat(held).st_ino
    except FileNotFoundError:
        return False
    return same and not being_written(held) and content_digest(held) == digest


def _writers_done(held: int, deadline: float) -> bool:
    while being_written(held):
        if time.monotonic() >= deadline:
            return False
        time.sleep(_POLL_S)
    return True


def _content(held: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(held, _READ_CHUNK, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


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
