"""The ledger: what every manager of this user on this machine holds, in one SQLite file (WAL).

A record, never the owner: each manager writes its own rows (its member row,
its models, its waiting requests) and reads the others'; each frees its own
models. The file is created with mode 0600 and refused when another user
owns it. Members whose process is gone (or whose pid now belongs to a
process started later) are dropped by whoever reads them. A deleted or
corrupt file is recreated, with a warning.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import psutil

from ...errors import ConfigurationError

__all__ = ["LEDGER_ENV", "Ledger", "MemberRow", "ModelRow", "RequestRow", "default_ledger_path", "process_alive"]

log = logging.getLogger(__name__)

LEDGER_ENV = "JUPYTER_LLM_MANAGER_LEDGER"
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
"""


def default_ledger_path() -> Path:
    """``$JUPYTER_LLM_MANAGER_LEDGER``, else ``<jupyter runtime dir>/llm_manager_ledger.sqlite``."""
    if os.environ.get(LEDGER_ENV):
        return Path(os.path.expanduser(os.environ[LEDGER_ENV]))
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "llm_manager_ledger.sqlite"


def process_alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``started`` (not a reused pid)."""
    try:
        return abs(psutil.Process(pid).create_time() - started) < 1.0
    except (psutil.Error, OSError, ValueError):
        return False


@dataclass(frozen=True)
class MemberRow:
    """One manager: its process, its kernel and notebook, where its listener is."""

    member: str
    pid: int
    started: float
    kernel: str
    notebook: str
    address: str
    seen: float


@dataclass(frozen=True)
class ModelRow:
    """One loaded (or loading) instance of a member, on one device."""

    member: str
    key: str
    model_id: str
    device: str
    bytes: int
    state: str
    pinned: bool
    leases: int
    last_used: float  # wall clock
    priority: int
    protected: bool


@dataclass(frozen=True)
class RequestRow:
    """A request waiting for capacity, in the machine-wide queue (first come, first served).

    ``needed`` is what it will take per device: later requests count it as
    taken, so room freed for this one is never taken by them first.
    """

    arrival: int
    member: str
    model_id: str
    needed: dict[str, int]
    priority: int
    since: float


_T = TypeVar("_T")
#: The ledger's three tables: members, their models, the waiting requests (in arrival order).
_AllRows = tuple[list[MemberRow], list[ModelRow], list[RequestRow]]


class Ledger:
    """One process's connection to the ledger file; thread-safe (one lock around the connection)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()  # publish checks and writes under one hold
        self._connection: sqlite3.Connection | None = None
        self._inode: int | None = None
        self.recreated = ""  # why the file was recreated last, for a warning
        self._closed = False  # closed for good: a late write of a thread that is stopping does nothing
        self._left: set[str] = set()  # members that left through this connection: never published again
        # All rows as last read, with the PRAGMA data_version they were read at: read again only when
        # another connection has committed since, or this one changed others' rows (a member left).
        self._seen: tuple[int, list[MemberRow], list[ModelRow], list[RequestRow]] | None = None

    # -- the connection ------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        """The open connection, (re)opened when the file was deleted or replaced; caller holds the lock."""
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
            return self._schema(sqlite3.connect(self.path, timeout=5.0, check_same_thread=False,
                                                isolation_level=None))
        except sqlite3.DatabaseError as error:  # not a database (overwritten, truncated): start again
            self.recreated = f"the ledger {self.path} was unreadable ({error}); it was recreated"
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            descriptor = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            os.close(descriptor)
            return self._schema(sqlite3.connect(self.path, timeout=5.0, check_same_thread=False,
                                                isolation_level=None))

    @staticmethod
    def _schema(connection: sqlite3.Connection) -> sqlite3.Connection:
        """WAL mode and the tables; a queue of an older layout is dropped (its requests are asked again)."""
        connection.execute("PRAGMA journal_mode=WAL")
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.execute("BEGIN IMMEDIATE")
        try:
            if connection.execute("PRAGMA user_version").fetchone()[0] < _VERSION:
                connection.execute("DROP TABLE IF EXISTS requests")
                connection.execute(f"PRAGMA user_version = {_VERSION}")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                connection.execute(statement)
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

    def _run(self, work: str, parameters: Iterable[Sequence[object]] | Sequence[object] = (), *,
             many: bool = False) -> list[tuple]:
        """Run one statement (its rows)."""
        def run(connection: sqlite3.Connection) -> list[tuple]:
            if many:
                connection.executemany(work, parameters)  # type: ignore[arg-type]
                return []
            return connection.execute(work, parameters).fetchall()  # type: ignore[arg-type]

        return self._attempt(run, [])

    def _transaction(self, statements: list[tuple[str, Sequence[object] | list[Sequence[object]], bool]]) -> None:
        """Several statements at once (one write transaction), so readers never see half an update."""
        def run(connection: sqlite3.Connection) -> None:
            connection.execute("BEGIN IMMEDIATE")
            try:
                for statement, parameters, many in statements:
                    if many:
                        connection.executemany(statement, parameters)  # type: ignore[arg-type]
                    else:
                        connection.execute(statement, parameters)
                connection.execute("COMMIT")
            except BaseException:
                connection.execute("ROLLBACK")
                raise

        self._attempt(run, None)

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
            if self._connection is not None:
                self._connection.close()
                self._connection = None

    # -- what this member writes -----------------------------------------------------------------

    def publish(self, member: MemberRow, models: Sequence[ModelRow]) -> None:
        """This member's row and its models, replacing what it published before (never after it left)."""
        with self._lock:
            if member.member in self._left:
                return
            self._transaction([
                ("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?, ?)",
                 (member.member, member.pid, member.started, member.kernel, member.notebook, member.address,
                  member.seen), False),
                ("DELETE FROM models WHERE member = ?", (member.member,), False),
                ("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                 [(m.member, m.key, m.model_id, m.device, m.bytes, m.state, int(m.pinned), m.leases, m.last_used,
                   m.priority, int(m.protected)) for m in models], True),
            ])

    def publish_current(self, read: Callable[[], tuple[MemberRow, Sequence[ModelRow]]]) -> None:
        """Publish what ``read()`` says now, read under this ledger's lock: two publishers of one member
        (the publisher thread, a reservation being announced) never write an older picture over a newer one."""
        with self._lock:
            self.publish(*read())

    def leave(self, member: str) -> None:
        """This member is gone: its rows go, and a publish still on its way is dropped."""
        with self._lock:
            self._left.add(member)
            self._seen = None
            self._transaction([(f"DELETE FROM {table} WHERE member = ?", (member,), False)
                               for table in ("members", "models", "requests")])

    def enqueue(self, member: str, model_id: str, needed: Mapping[str, int], priority: int) -> int:
        """A request of this member waits for capacity: its place in the machine-wide queue."""
        with self._lock:
            connection = self._connect()
            cursor = connection.execute("INSERT INTO requests (member, model_id, needed, priority, since) "
                                        "VALUES (?, ?, ?, ?, ?)", (member, model_id, json.dumps(dict(needed)),
                                                                   priority, time.time()))
            return int(cursor.lastrowid or 0)

    def requeue(self, arrival: int, needed: Mapping[str, int]) -> None:
        """A waiting request now needs other room (another placement or context): its place stays."""
        self._run("UPDATE requests SET needed = ? WHERE arrival = ?", (json.dumps(dict(needed)), arrival))

    def dequeue(self, arrival: int) -> None:
        self._run("DELETE FROM requests WHERE arrival = ?", (arrival,))

    # -- what every member reads ---------------------------------------------------------------------

    def others(self, member: str) -> _AllRows:
        """Every other running member's rows: members, models, waiting requests (in arrival order).

        Read in one transaction, so the three agree, and read again only when
        another connection has written since (``PRAGMA data_version``): this
        member's own writes touch only its own rows, so planning a load reads
        next to nothing. A member whose process is gone is dropped, as in :meth:`members`.
        """
        with self._lock:
            members, models, requests = self._read_all()
            gone = {row.member for row in members if row.member != member and not process_alive(row.pid, row.started)}
            for left in gone:
                self.leave(left)
        present = {row.member for row in members if row.member != member} - gone
        return ([row for row in members if row.member in present], [row for row in models if row.member in present],
                [row for row in requests if row.member in present])

    def _read_all(self) -> _AllRows:
        """Every row, as last read when no other connection has committed since (caller holds the lock)."""
        def read(connection: sqlite3.Connection) -> _AllRows:
            version = connection.execute("PRAGMA data_version").fetchone()[0]
            if self._seen is not None and self._seen[0] == version:
                return self._seen[1:]
            connection.execute("BEGIN")
            try:
                rows = ([MemberRow(*row) for row in connection.execute("SELECT * FROM members")],
                        [_model_row(row) for row in connection.execute("SELECT * FROM models")],
                        [_request_row(row) for row in connection.execute("SELECT * FROM requests ORDER BY arrival")])
            finally:
                if connection.in_transaction:  # an error may have ended it already: that error is the one to see
                    connection.execute("COMMIT")
            self._seen = (version, *rows)
            return rows

        nothing: _AllRows = ([], [], [])
        return self._attempt(read, nothing)

    def members(self) -> list[MemberRow]:
        """The members whose process runs; the others' rows are dropped on the way."""
        return self.others("")[0]  # no member is called "": every row is checked

    def models(self) -> list[ModelRow]:
        return [_model_row(r) for r in self._run("SELECT * FROM models")]

    def requests(self) -> list[RequestRow]:
        return [_request_row(r) for r in self._run("SELECT * FROM requests ORDER BY arrival")]


def _model_row(r: Sequence) -> ModelRow:
    return ModelRow(r[0], r[1], r[2], r[3], r[4], r[5], bool(r[6]), r[7], r[8], r[9], bool(r[10]))


def _request_row(r: Sequence) -> RequestRow:
    return RequestRow(r[0], r[1], r[2], _needed(r[3]), r[4], r[5])


def _needed(text: object) -> dict[str, int]:
    """A request's bytes per device, as written; a row that says nothing sensible claims nothing."""
    try:
        found = json.loads(text) if isinstance(text, str) else {}
    except ValueError:
        return {}
    if not isinstance(found, dict):
        return {}
    return {str(device): int(size) for device, size in found.items()
            if isinstance(size, int) and not isinstance(size, bool) and 0 < size < 2**62}
