"""Reading a configuration file that someone may be writing at that very moment.

Most editors save in place: they truncate the file, then write it. A reader
in between sees an empty file, or half of one, and a save that believed it
would write back only what it knows. So a read is believed only once it can be:

- a text that parses and says something is believed at once, unless the file
  was modified less than :data:`SETTLE_S` ago (a writer may still be writing,
  and half a file often parses): then it is read again until it has not
  changed for :data:`SETTLE_S`;
- an empty or unparsable file is read again for at least :data:`SETTLE_S`
  (measured on the monotonic clock, from the last change seen) before it is
  believed: a file that stays empty is empty; one that stays broken is an error;
- a file this process wrote itself, unchanged since, is complete (its writes
  are atomic); a missing file is empty.

A save waits at most :data:`MAX_WAIT_S` for a file that keeps changing, then
fails, writing nothing, rather than believe a version that may be partial.
Loading (nothing is written back) believes any text that parses. What was
read carries a fingerprint (size, modification time, inode, content digest),
so a save can tell, just before it renames its new version into place,
whether the file changed since.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..support.regular_files import TooLarge, open_regular, read_descriptor
from ..support.units import excerpt
from .bounded_yaml import MAX_FILE_BYTES, YamlProblem, load_yaml

__all__ = ["MAX_WAIT_S", "SETTLE_S", "Reading", "Snapshot", "read_settled", "reading_of", "remember_written",
           "snapshot"]

log = logging.getLogger(__name__)

#: How long a file must stay the same before an empty, unparsable or just-modified read of it is believed.
SETTLE_S = 0.1
#: The longest a read waits for a file that keeps changing.
MAX_WAIT_S = 2.0
_POLL_S = 0.01


@dataclass(frozen=True)
class Snapshot:
    """The bytes of a file as read once (``None``: no file), and what tells a later change."""

    raw: bytes | None
    stamp: tuple[int, int, int] | None  # size, mtime_ns, inode
    digest: str

    def same_as(self, other: Snapshot) -> bool:
        """Whether both reads saw the same file: same size, modification time, inode and content."""
        return self.stamp == other.stamp and self.digest == other.digest

    @property
    def modified_ns(self) -> int | None:
        return None if self.stamp is None else self.stamp[1]


@dataclass(frozen=True)
class Reading:
    """A believed read: the text, its plain YAML data (``None``: empty) and the snapshot it came from."""

    text: str
    data: Any
    snapshot: Snapshot


_written: dict[str, Snapshot] = {}  # path -> what this process last wrote there
_written_lock = threading.Lock()


def remember_written(path: Path, written: Snapshot) -> None:
    """Note what this process just wrote to ``path`` atomically: reading exactly that again needs no wait."""
    with _written_lock:
        _written[str(path)] = written


def snapshot(path: Path) -> Snapshot:
    """Read ``path`` once (a missing file reads as ``raw=None``); too large a file is refused unread."""
    where = str(path)
    try:
        descriptor = open_regular(path)  # a FIFO or a device is refused, never waited on
    except FileNotFoundError:
        return Snapshot(None, None, "")
    except OSError as error:
        raise ConfigurationError(f"cannot read the file: {error.strerror or error}", path=where) from None
    try:
        stat = os.fstat(descriptor)
        if stat.st_size > MAX_FILE_BYTES:
            raise _too_large(where)
        raw = read_descriptor(descriptor, MAX_FILE_BYTES, where)
    except TooLarge:  # it grew since
        raise _too_large(where) from None
    except OSError as error:
        raise ConfigurationError(f"cannot read the file: {error.strerror or error}", path=where) from None
    finally:
        os.close(descriptor)
    return Snapshot(raw, (stat.st_size, stat.st_mtime_ns, stat.st_ino), hashlib.sha256(raw).hexdigest())


def read_settled(path: Path, *, wait_if_recent: bool = True, deadline: float | None = None,
                 clock: Callable[[], float] = time.monotonic, pause: Callable[[float], None] = time.sleep) -> Reading:
    """Read ``path`` until what was read can be believed (see the module's rules); a missing file is empty.

    ``wait_if_recent=False`` believes any text that parses and says something
    (loading: nothing is written back). ``deadline`` (on ``clock``; default
    :data:`MAX_WAIT_S` from now) ends the waiting for a file that keeps
    changing, with a :class:`ConfigurationError`: believing it could lose what
    its writer was writing. An unparsable file, once believed, is a
    :class:`ConfigurationError` naming the line.
    """
    current = snapshot(path)
    parsed = _parse(current, path)
    if current.raw is None or (_says_something(parsed) and (not wait_if_recent or _complete(current, path))):
        return _reading(current, parsed)  # no file: nothing to lose (a writer in place truncates, never deletes)
    started = stable_since = clock()
    # an empty or unparsable read is always given SETTLE_S to change, even past the deadline
    limit = started + MAX_WAIT_S if deadline is None else max(deadline, started + 2 * SETTLE_S)
    while True:
        pause(_POLL_S)
        now = clock()
        latest = snapshot(path)
        if not latest.same_as(current):
            current, parsed, stable_since = latest, _parse(latest, path), now
            if _says_something(parsed) and not wait_if_recent:
                return _reading(current, parsed)
        elif now - stable_since >= SETTLE_S:
            log.debug("%s believed after %.2f s", path, now - started)
            return _reading(current, parsed)
        if now >= limit:
            raise ConfigurationError(f"the file kept changing for {now - started:.1f} s while it was read (an "
                                     "editor writing it?); nothing was written: try again once it is saved",
                                     path=str(path))


def reading_of(raw: bytes, path: Path) -> Reading:
    """The text of a file as it was read some other way (its bytes), believed as is; unparsable: an error."""
    current = Snapshot(raw, None, hashlib.sha256(raw).hexdigest())
    return _reading(current, _parse(current, path))


def _says_something(parsed: Any) -> bool:
    return parsed is not None and not isinstance(parsed, ConfigurationError)


def _reading(current: Snapshot, parsed: Any) -> Reading:
    if isinstance(parsed, ConfigurationError):
        raise parsed
    return Reading((current.raw or b"").decode("utf-8"), parsed, current)


def _parse(current: Snapshot, path: Path) -> Any:
    """The plain data of a snapshot (``None``: nothing in it), or the :class:`ConfigurationError` it is."""
    if current.raw is None:
        return None
    try:
        return load_yaml(current.raw.decode("utf-8"))
    except UnicodeDecodeError as error:
        return ConfigurationError(f"cannot read the file: it is not UTF-8 text ({error.reason} at byte "
                                  f"{error.start})", path=str(path))
    except YamlProblem as problem:
        return ConfigurationError(excerpt(problem.message), path=str(path), line=problem.line)


def _complete(current: Snapshot, path: Path) -> bool:
    """Whether a text that parses can be believed at once: this process wrote it, or nobody did just now."""
    with _written_lock:
        own = _written.get(str(path))
    if own is not None and own.same_as(current):
        return True
    modified = current.modified_ns or 0
    return time.time_ns() - modified >= SETTLE_S * 1e9  # file ages are wall-clock times, like mtime


def _too_large(where: str) -> ConfigurationError:
    return ConfigurationError(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; a configuration "
                              "file is a few KB", path=where)
