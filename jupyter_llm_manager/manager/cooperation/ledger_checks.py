"""Checks before the ledger's file is opened or changed: whose it is, who else can reach it, whether it is ours.

A ledger lists every notebook of the user and where its socket is, so its
files stay where only the user can reach them: the file, its ``-wal`` and
``-shm`` are the user's own regular files (a link only where the user made it
and it points at such a file), readable and writable by the user alone, in a
folder nobody else may replace them in. Another program's file is never
altered: only a file that carries the ledger's application id (or an empty
one, or a ledger of an older layout, its tables and columns as this package
made them) is written to. A path that names no regular file (a folder, a
pipe, a device) or a file with other content is not a ledger
(:class:`NotALedger`: a ``ConfigurationError`` where the user set that path).
"""

from __future__ import annotations

import os
import sqlite3
import stat
from pathlib import Path

from ...errors import ConfigurationError

__all__ = ["APPLICATION_ID", "COMPANIONS", "NotALedger", "UnsafeLedger", "create_private", "header_kind",
           "identity", "kind_of", "private_folder", "resolved"]

#: ``PRAGMA application_id`` of a ledger: "JLML" (Jupyter LLM manager ledger).
APPLICATION_ID = 0x4A4C4D4C
#: The files SQLite keeps beside the ledger in WAL mode.
COMPANIONS = ("-wal", "-shm")
#: The tables of a ledger of an older layout (before the application id): adopted as it is.
_OLDER_TABLES = {"members", "models", "requests", "sqlite_sequence"}
_OLDER_COLUMNS = {"members": {"member", "pid", "started", "kernel", "notebook", "address", "seen"},
                  "models": {"member", "key", "model_id", "device", "bytes", "state", "pinned", "leases", "last_used",
                             "priority", "protected"}}


class UnsafeLedger(ConfigurationError):
    """The ledger's file, a companion or its folder could be read or replaced by another user."""


class NotALedger(ConfigurationError):
    """The ledger's path names a file that is not a ledger (a text file, another program's database)."""


def _refuse(path: Path, why: str) -> UnsafeLedger:
    return UnsafeLedger(f"the ledger {path} is not safe to use: {why}; set ledger_path (or "
                        "$JUPYTER_LLM_MANAGER_LEDGER) to a file in a folder only you can write")


def _not_a_ledger(path: Path, what: str) -> NotALedger:
    return NotALedger(f"the ledger's path {path} names {what}, not a ledger; it is left as it is: set ledger_path "
                      "to the path of a new file")


def _kind_of_file(found: os.stat_result) -> str:
    for test, what in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a device"), (stat.S_ISBLK, "a device")):
        if test(found.st_mode):
            return what
    return "a special file"


def _check_own(path: Path, found: os.stat_result, *, folder: bool = False, content: bool = False) -> None:
    """``found`` (an lstat or fstat of ``path``) is the user's own, reachable by the user alone. With
    ``content`` (the ledger itself, not a companion), a file that is not a ledger at all is said to be that
    (:class:`NotALedger`) before whether others may reach it."""
    if found.st_uid != os.getuid():
        raise _refuse(path, "it belongs to another user")
    if folder:
        return
    if not stat.S_ISREG(found.st_mode):
        if content:
            raise _not_a_ledger(path, _kind_of_file(found))
        raise _refuse(path, "it is not a regular file")
    if stat.S_IMODE(found.st_mode) & 0o077:
        if content and header_kind(path) == "other":
            raise _not_a_ledger(path, "a file that is not a database, or another program's")
        raise _refuse(path, f"other users may read or write it (mode {stat.S_IMODE(found.st_mode):o})")


def private_folder(folder: Path, *, create: bool) -> None:
    """``folder`` exists (made 0700 when ``create``) and nobody else may replace the files in it.

    A folder of the user's that others cannot write, or one with the sticky bit (``/tmp``: nobody may
    rename or delete another user's file there).
    """
    if create and not folder.exists():
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(folder, 0o700)  # the umask may have taken bits away, never added: this is exact
    found = os.stat(folder)
    if not stat.S_ISDIR(found.st_mode):
        raise _refuse(folder, "its folder is not a folder")
    shared = stat.S_IMODE(found.st_mode) & 0o022
    if shared and not found.st_mode & stat.S_ISVTX:
        raise _refuse(folder, "other users may replace files in its folder")
    if found.st_uid not in (os.getuid(), 0):
        raise _refuse(folder, "its folder belongs to another user")


def resolved(path: Path) -> Path:
    """The file to open for ``path``: itself, or where the user's own link points (checked, never followed
    blindly). Every existing file among it and its companions is the user's own and private."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        found = None
    if found is not None and stat.S_ISLNK(found.st_mode):
        if found.st_uid != os.getuid():
            raise _refuse(path, "it is a link made by another user")
        target = Path(os.path.realpath(path))
        try:
            target_found = os.lstat(target)
        except FileNotFoundError:
            raise _refuse(path, f"it is a link to {target}, which does not exist") from None
        if not stat.S_ISREG(target_found.st_mode):  # a link to a folder, a pipe, a device: no ledger, whose ever
            raise _not_a_ledger(path, f"a link to {_kind_of_file(target_found)}")
        _check_own(target, target_found)  # a link's target others may reach: not safe, whatever it holds
        path = target
    elif found is not None:
        _check_own(path, found, content=True)
    for suffix in COMPANIONS:
        companion = Path(f"{path}{suffix}")
        try:
            _check_own(companion, os.lstat(companion))
        except FileNotFoundError:
            pass
    return path


def identity(path: Path) -> tuple[int, int] | None:
    """The file at ``path`` (device, inode), never following a link; ``None`` where there is none."""
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    return found.st_dev, found.st_ino


def create_private(path: Path) -> tuple[bool, tuple[int, int]]:
    """Create ``path`` (mode 0600) where no file is: whether this call created it, and the file (device,
    inode) as checked. An existing file is opened without following a link and checked again (it may have
    appeared since it was looked at)."""
    flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL, 0o600)
        created = True
    except FileExistsError:
        try:
            descriptor = os.open(path, flags)
        except OSError as error:  # a link (ELOOP) or a folder appeared since it was looked at
            raise _refuse(path, f"it cannot be opened as a file of its own ({error.strerror})") from None
        created = False
    try:
        found = os.fstat(descriptor)
        _check_own(path, found)
    finally:
        os.close(descriptor)
    return created, (found.st_dev, found.st_ino)


def header_kind(path: Path) -> str:
    """What the file at ``path`` is, from its own bytes, before SQLite opens it (SQLite would read it through a
    ``-wal`` left by an earlier file at that path, and may write that into it): ``"empty"``, ``"ledger"``,
    ``"other"`` (a text file, another program's database) or ``"unknown"`` (a database without an application
    id: :func:`kind_of` tells, once SQLite may open it)."""
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    descriptor = os.open(path, flags)
    try:
        header = os.read(descriptor, 100)
    finally:
        os.close(descriptor)
    if not header:
        return "empty"
    if len(header) < 100 or not header.startswith(b"SQLite format 3\0"):
        return "other"
    application = int.from_bytes(header[68:72], "big")
    if application == APPLICATION_ID:
        return "ledger"
    if application != 0:
        return "other"
    try:  # the tables the file itself lists (``immutable``: no -wal is read, nothing is written)
        connection = sqlite3.connect(f"{path.resolve().as_uri()}?immutable=1", uri=True)
        try:
            older = _older_ledger(connection)
        finally:
            connection.close()
    except sqlite3.DatabaseError:
        return "other"
    # a database without tables is another program's too: a new ledger's first write brings its tables and
    # application id together (until then its file is empty)
    return "unknown" if older else "other"


def _older_ledger(connection: sqlite3.Connection) -> bool:
    """A ledger written by an older version of this package (before the application id): its tables, and the
    members' and models' columns, as this package made them."""
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not (tables <= _OLDER_TABLES and {"members", "models"} <= tables):
        return False
    return all({row[1] for row in connection.execute(f"PRAGMA table_info({table})")} == columns
               for table, columns in _OLDER_COLUMNS.items())


def kind_of(connection: sqlite3.Connection) -> str:
    """What the open file is: ``"ledger"``, ``"empty"`` (no table: may become one) or ``"other"``.

    Reads only the header and the table list, so another program's file is never changed; a file that is not
    a database raises :class:`sqlite3.DatabaseError`.
    """
    application = connection.execute("PRAGMA application_id").fetchone()[0]
    if application == APPLICATION_ID:
        return "ledger"
    if application != 0:
        return "other"
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables and connection.execute("PRAGMA user_version").fetchone()[0] == 0:
        return "empty"
    if _older_ledger(connection):
        return "ledger"  # written by an older version of this package, before the application id
    return "other"
