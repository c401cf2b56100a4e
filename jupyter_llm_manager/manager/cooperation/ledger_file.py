"""The ledger's file: one connection per process, opened with the file's checks, and the schema.

The file is created with mode 0600 and refused when another user owns it. A
connection is reopened when the file was deleted or replaced, and never
used in a process forked from the one that opened it (the child opens its
own). A file that is not a database is recreated, with a warning.
"""

from __future__ import annotations

import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from ...errors import ConfigurationError
from .rows import MemberRow, ModelRow, RequestRow

__all__ = ["BUSY_S", "LedgerFile", "Statement", "execute", "transaction"]

#: The layout's version (``PRAGMA user_version``): a ledger of an older layout has its queue made again.
_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS members (member TEXT PRIMARY KEY, pid INTEGER, started REAL, kernel TEXT,
    notebook TEXT, address TEXT, seen REAL);
CREATE TABLE IF NOT EXISTS models (member TEXT, key TEXT, model_id TEXT, device TEXT, bytes INTEGER, state TEXT,
    pinned INTEGER, leases INTEGER, last_used REAL, priority INTEGER, protected INTEGER,
    PRIMARY KEY (member, key, device));
CREATE TABLE IF NOT EXISTS requests (arrival INTEGER PRIMARY KEY AUTOINCREMENT, member TEXT, model_id TEXT,
    needed TEXT, priority INTEGER, since REAL);
CREATE TABLE IF NOT EXISTS waits (member TEXT, request INTEGER, arrival INTEGER, model_id TEXT, holds TEXT,
    needs TEXT, since REAL, PRIMARY KEY (member, request));
"""
#: How long one statement waits for another connection's write lock (a placement holds it a millisecond or two).
BUSY_S = 1.0

_T = TypeVar("_T")
Statement = tuple[str, Sequence[object] | list[Sequence[object]], bool]


class LedgerFile:
    """One process's connection to the ledger file; thread-safe (one lock around the connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()  # a placement, a publish or a read: one at a time on the connection
        self._connection: sqlite3.Connection | None = None
        self._inode: int | None = None
        self._pid = os.getpid()
        self.recreated = ""  # why the file was recreated last, for a warning
        self._closed = False  # closed for good: a late write of a thread that is stopping does nothing
        self.left: set[str] = set()  # members that left through this connection: never published again
        # All rows as last read, with the PRAGMA data_version they were read at: read again only when
        # another connection has committed since, or this one changed others' rows (a member left).
        self._seen: tuple[int, list[MemberRow], list[ModelRow], list[RequestRow]] | None = None

    # -- the connection ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The open connection, (re)opened when the file was replaced or this is a forked child; lock held."""
        if self._pid != os.getpid():  # forked: the parent's connection is the parent's, never touched here
            self._connection, self._inode, self._pid = None, None, os.getpid()
        try:
            now = os.stat(self.path).st_ino
        except FileNotFoundError:
            now = None
        if self._connection is not None and now == self._inode:
            return self._connection
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            self.recreated = f"the ledger {self.path} was deleted or replaced; it is written again"
        self._seen = None  # data_version counts per connection
        self._connection = self._open()
        self._inode = os.stat(self.path).st_ino
        return self._connection

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            owner = os.fstat(descriptor)
        finally:
            os.close(descriptor)
        if owner.st_uid != os.getuid() or not stat.S_ISREG(owner.st_mode):
            raise ConfigurationError(f"the ledger {self.path} belongs to another user or is not a file; set "
                                     "ledger_path (or $JUPYTER_LLM_MANAGER_LEDGER) to a file of your own")
        try:
            return self._schema(_connection(self.path))
        except sqlite3.DatabaseError as error:  # not a database (overwritten, truncated): start again
            self.recreated = f"the ledger {self.path} was unreadable ({error}); it was recreated"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(descriptor)
            return self._schema(_connection(self.path))

    @staticmethod
    def _schema(connection: sqlite3.Connection) -> sqlite3.Connection:
        """WAL mode and the tables; a queue of an older layout is dropped (its requests are asked again)."""
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("BEGIN IMMEDIATE")  # the version is read and changed by one process at a time
        try:
            if connection.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
                execute(connection, [("DROP TABLE IF EXISTS requests", (), False),
                                      (f"PRAGMA user_version = {_VERSION}", (), False)])
            execute(connection, [(statement, (), False) for statement in filter(str.strip, _SCHEMA.split(";"))])
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                connection.execute("ROLLBACK")
            raise
        return connection

    def _attempt(self, work: Callable[[sqlite3.Connection], _T], closed: _T) -> _T:
        """Do ``work`` on the connection, once more on a new file when this one turned out corrupt.

        ``closed`` is the answer once the ledger is closed for good.
        """
        with self._lock:
            for attempt in (1, 2):
                if self._closed:
                    return closed
                try:
                    return work(self._connect())
                except sqlite3.DatabaseError as error:
                    if attempt == 2 or isinstance(error, sqlite3.OperationalError) and "locked" in str(error):
                        raise
                    self._reset(error)
        return closed

    def _reset(self, error: BaseException) -> None:
        """The file is corrupt: drop it and start a new one (caller holds the lock)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.path}{suffix}").unlink(missing_ok=True)
        self._inode = None
        self.recreated = f"the ledger {self.path} was corrupt ({error}); it was recreated"

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
