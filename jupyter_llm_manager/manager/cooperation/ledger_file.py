"""The ledger's file: one connection per process, opened with the file's checks, and the schema.

The file is created (mode 0600) only where no file is, and only to write: a
reader (``jupyter-llm-manager ps``, a status view) never creates anything.
Only a file that carries the ledger's schema is written to; another
program's file is never altered (:mod:`.ledger_checks`). A connection is
reopened when the file was deleted or replaced, and never used in a process
forked from the one that opened it (the child opens its own). A file this
member had open as its ledger that turns out not to be a database any more
is recreated, with a warning; an error that passes (a full disk, an I/O
error, a lock, a file whose header still says it is a database) never deletes
anything. Whenever the ledger is lost, what was last read of the others still
counts (:mod:`.recollection`): first the lost file is read once more through
the connection still open on it (another kernel may have written since this
one last read it). When even that fails, placements wait :data:`SETTLE_S`
(:attr:`LedgerFile.settling`) for every member to write the new file, so a
member this one never read is not missed.
"""

from __future__ import annotations

import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from . import ledger_checks as checks
from .recollection import Recollection
from .rows import MemberRow, ModelRow, RequestRow

__all__ = ["BUSY_S", "SETTLE_S", "LedgerFile", "Statement", "execute", "transaction"]

#: The layout's version (``PRAGMA user_version``): a ledger of an older layout has its queue made again.
#: 3: the application id (:data:`~.ledger_checks.APPLICATION_ID`) marks the file as a ledger.
_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (member TEXT PRIMARY KEY, pid INTEGER, started REAL, kernel TEXT,
    notebook TEXT, address TEXT, seen REAL);
CREATE TABLE IF NOT EXISTS models (member TEXT, key TEXT, model_id TEXT, device TEXT, bytes INTEGER, state TEXT,
    pinned INTEGER, leases INTEGER, last_used REAL, priority INTEGER, protected INTEGER,
    PRIMARY KEY (member, key, device));
CREATE TABLE IF NOT EXISTS requests (arrival INTEGER PRIMARY KEY AUTOINCREMENT, member TEXT, model_id TEXT,
    needed TEXT, priority INTEGER, since REAL);
CREATE TABLE IF NOT EXISTS copies (member TEXT, key TEXT, share TEXT, context INTEGER, borrowers TEXT,
    PRIMARY KEY (member, key));
CREATE TABLE IF NOT EXISTS waits (member TEXT, request INTEGER, arrival INTEGER, model_id TEXT, holds TEXT,
    needs TEXT, since REAL, PRIMARY KEY (member, request));
"""
_TABLES = frozenset(re.findall(r"CREATE TABLE IF NOT EXISTS (\w+)", _SCHEMA))
#: How long one statement waits for another connection's write lock (a placement holds it a millisecond or two).
BUSY_S = 1.0
#: How long placements wait after this member lost a ledger it could not read a last time: one heartbeat of
#: every member's publisher (:data:`~.publishing.HEARTBEAT_S`, 2 s), when each writes the new file, and a margin.
SETTLE_S = 3.0
#: SQLite's codes for a file that is not a database, or a damaged one.
_DAMAGED = {getattr(sqlite3, "SQLITE_NOTADB", 26), getattr(sqlite3, "SQLITE_CORRUPT", 11)}

_T = TypeVar("_T")
Statement = tuple[str, Sequence[object] | list[Sequence[object]], bool]


def damaged(error: BaseException) -> bool:
    """Whether ``error`` says the file is not a database or is corrupt (not an error that passes)."""
    code = getattr(error, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGED
    return isinstance(error, sqlite3.DatabaseError) and any(
        words in str(error) for words in ("not a database", "malformed", "corrupt"))


class LedgerFile:
    """One process's connection to the ledger file; thread-safe (one lock around the connection).

    ``explicit``: the path was set by the user (``ledger_path``), so a file there that is not a ledger is
    the user's mistake to hear about (:class:`~.ledger_checks.NotALedger`, a ``ConfigurationError``).
    """

    def __init__(self, path: Path, *, explicit: bool = False) -> None:
        self.path = path
        self.explicit = explicit
        self._lock = threading.RLock()  # a placement, a publish or a read: one at a time on the connection
        self._connection: sqlite3.Connection | None = None
        self._identity: tuple[int, int] | None = None  # the file this member has open as its ledger
        self._target = path  # where that file is (where the user's own link points, if it is one)
        self._ready = False  # the connection's file has the schema (it was written through it)
        self._pid = os.getpid()
        self.recreated = ""  # why the file was recreated last, for a warning
        self._closed = False  # closed for good: a late write of a thread that is stopping does nothing
        self.left: set[str] = set()  # members that left through this connection: never published again
        self.recollection = Recollection()
        self._bad_rows: set[str] = set()  # the rows warned about as unreadable: one warning each
        self._settle_until = 0.0  # monotonic: until then a placement may miss a member (see ``settling``)
        #: Called (lock held, so cheap) when the file this member had open was lost: it writes its rows at once.
        self.on_recreated: Callable[[], None] | None = None
        self._queued: dict[int, tuple[int, int] | None] = {}  # arrival -> the file it was queued in
        # All rows as last read, with the PRAGMA data_version they were read at: read again only when
        # another connection has committed since, or this one changed others' rows (a member left).
        self._seen: tuple[int, list[MemberRow], list[ModelRow], list[RequestRow]] | None = None

    # -- the connection ------------------------------------------------------------------------

    def _connect(self, create: bool = True) -> sqlite3.Connection | None:
        """The open connection, (re)opened when the file was replaced or this is a forked child; lock held.

        ``create``: to write (the file is made where none is, and given the schema); else ``None`` where there
        is no ledger yet.
        """
        if self._pid != os.getpid():  # forked: the parent's connection is the parent's, never touched here
            self._connection, self._identity, self._ready, self._pid = None, None, False, os.getpid()
        target = checks.resolved(self.path)
        now = checks.identity(target)
        if self._connection is not None and (now, target) == (self._identity, self._target):
            if create and not self._ready:
                self._prepare(self._connection)
            return self._connection
        if self._connection is not None:
            self._drop(f"the ledger {self.path} was deleted or replaced; it is written again, and what the "
                       "other kernels held counts until they write it again")
        self._seen = None  # data_version counts per connection
        if now is None and not create:
            return None
        connection = self._open(target, now, create)
        if connection is not None:
            self._connection, self._target, self._identity = connection, target, checks.identity(target)
            self._ready = create
        return connection

    def _open(self, target: Path, now: tuple[int, int] | None, create: bool) -> sqlite3.Connection | None:
        """A new connection to ``target`` (``now``: the file there as looked at), checked as the module docstring
        says; ``None`` to read where there is no ledger yet."""
        checks.private_folder(target.parent, create=create)
        with _folder_locked(target.parent):
            return self._open_locked(target, now, create)

    def _open_locked(self, target: Path, now: tuple[int, int] | None, create: bool) -> sqlite3.Connection | None:
        """:meth:`_open`, no other member opening or creating a ledger in its folder meanwhile."""
        if create and checks.identity(target) is None:
            # a -wal or -shm without its file is what is left of a deleted ledger: SQLite would read it into
            # the new file. Nobody else creates or opens one meanwhile (the folder is locked).
            for suffix in checks.COMPANIONS:
                Path(f"{target}{suffix}").unlink(missing_ok=True)
        created, made = checks.create_private(target) if create else (False, now)
        if not created and checks.header_kind(target) == "other":  # never opened with SQLite: never changed
            raise self._not_a_ledger("not a database, or another program's")
        connection = _connection(target)
        try:
            if checks.identity(target) != made:  # replaced between the check and the open: someone else's doing
                raise checks.UnsafeLedger(f"the ledger {self.path} was replaced while it was opened; it is not "
                                          "safe to use")
            kind = "empty" if created else self._kind(connection)
            if kind == "empty" and not create:
                connection.close()
                return None  # nobody wrote a ledger there yet
            if create:
                self._prepare(connection)
        except BaseException:
            connection.close()
            raise
        return connection

    def _kind(self, connection: sqlite3.Connection) -> str:
        """What the file is; a file that is no ledger is refused (see :class:`~.ledger_checks.NotALedger`)."""
        try:
            kind = checks.kind_of(connection)
        except sqlite3.DatabaseError as error:
            if not damaged(error):
                raise
            kind = "text"
        if kind in ("other", "text"):
            raise self._not_a_ledger("another program's database" if kind == "other" else "not a database")
        return kind

    def _not_a_ledger(self, what: str) -> checks.NotALedger:
        setting = "ledger_path" if self.explicit else "the ledger's path ($JUPYTER_LLM_MANAGER_LEDGER or the default)"
        return checks.NotALedger(f"{setting} {self.path} names a file that is not a ledger ({what}); it is left "
                                 "as it is: set ledger_path to the path of a new file")

    def _prepare(self, connection: sqlite3.Connection) -> None:
        """WAL mode, the application id and the tables; a queue of an older layout is dropped (its requests
        are asked again). Only a ledger, or an empty file, gets past the check.

        A ledger that has them all is only read: kernels starting together each open it without queueing for
        the write lock (they hold the folder's lock meanwhile)."""
        if _prepared(connection):
            self._ready = True
            return
        connection.execute("BEGIN IMMEDIATE")  # the version is read and changed by one process at a time
        try:
            self._kind(connection)  # under the write lock: another process may have written it meanwhile
            if connection.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
                execute(connection, [("DROP TABLE IF EXISTS requests", (), False),
                                      (f"PRAGMA user_version = {_VERSION}", (), False),
                                      (f"PRAGMA application_id = {checks.APPLICATION_ID}", (), False)])
            execute(connection, [(statement, (), False) for statement in filter(str.strip, _SCHEMA.split(";"))])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        # WAL only now: a new ledger's application id is in the file itself from the start, not in its -wal
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        self._ready = True

    def _attempt(self, work: Callable[[sqlite3.Connection], _T], nothing: _T, *, create: bool = True) -> _T:
        """Do ``work`` on the connection, once more on a new file when this member's ledger turned out
        damaged (not a database any more).

        ``nothing`` is the answer once the ledger is closed for good, or to a read where there is no ledger.
        An error that passes (disk full, I/O, locked) is raised: nothing is deleted for it.
        """
        with self._lock:
            for attempt in (1, 2):
                if self._closed:
                    return nothing
                connection = self._connect(create)
                if connection is None:
                    return nothing
                try:
                    return work(connection)
                except sqlite3.DatabaseError as error:
                    if attempt == 2 or not damaged(error) or not self._still_ours():
                        raise
                    self._reset(error)
        return nothing

    def _still_ours(self) -> bool:
        """Whether the file at the path is the one this member has open as its ledger (so it may go)."""
        return self._connection is not None and checks.identity(self._target) == self._identity

    def _reset(self, error: BaseException) -> None:
        """This member's own ledger is damaged: remove it (and its companions) and start a new one.

        Not while its header still says it is a database (an error that may pass, a page damaged inside): then
        ``error`` is raised, and this member works alone with a warning while it lasts.
        """
        if checks.header_kind(self._target) in ("ledger", "unknown"):
            raise error
        self._drop(f"the ledger {self.path} was corrupt ({error}); it was recreated, and what the other "
                   "kernels held counts until they write it again")
        for suffix in ("", *checks.COMPANIONS):
            Path(f"{self._target}{suffix}").unlink(missing_ok=True)

    def _drop(self, why: str) -> None:
        """Close the connection to a file that is lost; the others' rows, read a last time through it (else
        as last read), are carried, and this member writes its own at once (lock held)."""
        complete = False
        if self._connection is not None:
            complete = self._last_reading(self._connection)
            self._connection.close()
        self._connection, self._identity, self._ready, self._seen = None, None, False, None
        self.recreated = why
        self.recollection.carry()
        if not complete:  # a member that wrote since this one last read is unknown: wait for it to write again
            self._settle_until = time.monotonic() + SETTLE_S
        if self.on_recreated is not None:
            self.on_recreated()

    def _last_reading(self, connection: sqlite3.Connection) -> bool:
        """Read every member's rows through ``connection``, still open on a lost file; whether that worked."""
        return False

    @property
    def settling(self) -> bool:
        """Whether a placement may miss a member now: this member lost a ledger it could not read a last time,
        less than :data:`SETTLE_S` ago (until every member has written the new file)."""
        return time.monotonic() < self._settle_until

    def take_recreated(self) -> str:
        with self._lock:
            said, self.recreated = self.recreated, ""
        return said

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._connection is not None and self._pid == os.getpid():
                self._connection.close()
            self._connection = None


def _prepared(connection: sqlite3.Connection) -> bool:
    """Whether the open file is a ledger of this layout in WAL mode with every table (read only)."""
    if connection.execute("PRAGMA application_id").fetchone()[0] != checks.APPLICATION_ID:
        return False
    if connection.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
        return False
    if str(connection.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
        return False
    tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    return _TABLES <= tables


@contextmanager
def _folder_locked(folder: Path) -> Iterator[None]:
    """The ledger's folder locked against other processes opening or creating a ledger in it (``flock``; where
    there is none, nothing is locked)."""
    try:
        import fcntl
    except ImportError:  # no flock on this system
        yield
        return
    descriptor = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        deadline = time.monotonic() + BUSY_S
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:  # a process stopped while opening: an error that passes
                    raise sqlite3.OperationalError("the ledger's folder is locked by another process") from None
                time.sleep(0.01)
        yield
    finally:
        os.close(descriptor)  # releases the lock


def _connection(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, timeout=BUSY_S, check_same_thread=False, isolation_level=None)


def execute(connection: sqlite3.Connection, statements: Iterable[Statement]) -> None:
    for statement, parameters, many in statements:
        if many:
            connection.executemany(statement, parameters)  # type: ignore[arg-type]
        else:
            connection.execute(statement, parameters)


def transaction(connection: sqlite3.Connection, statements: Sequence[Statement]) -> None:
    """Several statements at once (one write transaction), so readers never see half an update."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        execute(connection, statements)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise
