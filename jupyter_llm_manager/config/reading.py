"""Reading a configuration file that someone may be writing at that very moment.

Most editors save in place: they truncate the file, then write it. A reader
in between sees an empty file, or half of one, and a save that believed it
would write back only what it knows. So a read is believed only once it can be:

- a text that parses and says something is believed at once, unless the file
  was modified less than :data:`SETTLE_S` ago (a writer may still be writing):
  then it is read again until it has not changed for :data:`SETTLE_S`;
- an empty or unparsable file is read again for at least :data:`SETTLE_S`
  (measured on the monotonic clock, from the last change seen) before it is
  believed: a file that stays empty is empty; one that stays broken is an error;
- a file this process wrote itself, unchanged since, is complete (its writes are atomic).

No read waits longer than :data:`MAX_WAIT_S`. What was read carries a
fingerprint (size, modification time, inode, content digest), so a save can
tell, just before it renames its new version into place, whether the file
changed since.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..support.units import excerpt
from .bounded_yaml import MAX_FILE_BYTES, YamlProblem, load_yaml

__all__ = ["MAX_WAIT_S", "SETTLE_S", "Reading", "Snapshot", "read_settled", "remember_written", "snapshot"]

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
        stat = path.stat()
        if stat.st_size > MAX_FILE_BYTES:
            raise _too_large(where)
        raw = path.read_bytes()
    except FileNotFoundError:
        return Snapshot(None, None, "")
    except OSError as error:
        raise ConfigurationError(f"cannot read the file: {error.strerror or error}", path=where) from None
    if len(raw) > MAX_FILE_BYTES:  # it grew between the two calls
        raise _too_large(where)
    return Snapshot(raw, (stat.st_size, stat.st_mtime_ns, stat.st_ino), hashlib.sha256(raw).hexdigest())


def read_settled(path: Path, *, clock: Callable[[], float] = time.monotonic,
                 pause: Callable[[float], None] = time.sleep) -> Reading:
    """Read ``path`` until what was read can be believed (see the module's rules); a missing file is empty.

    An unparsable file, once believed, is a :class:`ConfigurationError` naming the line.
    """
    current = snapshot(path)
    parsed = _parse(current, path)
    if _believable(current, parsed, path):
        return _reading(current, parsed)
    started = stable_since = clock()
    while True:
        pause(_POLL_S)
        now = clock()
        latest = snapshot(path)
        if not latest.same_as(current):
            current, parsed, stable_since = latest, _parse(latest, path), now
        elif now - stable_since >= SETTLE_S:
            break
        if now - started >= MAX_WAIT_S:
            log.warning("%s kept changing for %.0f s while it was read; using the last version read",
                        path, MAX_WAIT_S)
            break
    if isinstance(parsed, ConfigurationError) or parsed is None:
        log.debug("%s read as %s after %.2f s", path, "empty" if parsed is None else "unparsable",
                  clock() - started)
    return _reading(current, parsed)


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


def _believable(current: Snapshot, parsed: Any, path: Path) -> bool:
    """Whether a first read can be believed without reading again."""
    if current.raw is None:
        return True  # no file: nothing to lose (a writer in place truncates, it does not delete)
    if parsed is None or isinstance(parsed, ConfigurationError):
        return False
    with _written_lock:
        own = _written.get(str(path))
    if own is not None and own.same_as(current):
        return True
    modified = current.modified_ns or 0
    return time.time_ns() - modified >= SETTLE_S * 1e9  # file ages are wall-clock times, like mtime


def _too_large(where: str) -> ConfigurationError:
    return ConfigurationError(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; a configuration "
                              "file is a few KB", path=where)
