"""The ledger: what every manager of this user on this machine holds, in one SQLite file (WAL).

A record, never the owner: each manager writes its own rows (its member row,
its models, its waiting requests and what those wait for) and reads the others'; each frees its own
models. A placement reads the others, decides and writes its reservation in
one write transaction (:meth:`Ledger.placement`, ``BEGIN IMMEDIATE`` as
diskcache does), so two kernels asking at the same instant never both see
the same room free. The file's checks, and what happens when it is lost or
damaged, are :mod:`.ledger_file`'s. Members whose process is gone (or whose
pid now belongs to a process started later) are dropped by whoever reads
them. A row that is not what this version writes is ignored, with one
warning (:mod:`.rows`). A connection is never shared with a process forked
from this one.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import TypeVar

from ...support.system import psutil
from ...support.units import excerpt
from .ledger_file import BUSY_S, LedgerFile, Statement, execute, transaction
from .recollection import AllRows
from .rows import (
    BadRow,
    CopyRow,
    MemberRow,
    ModelRow,
    RequestRow,
    WaitingRequest,
    copy_row,
    member_row,
    model_row,
    request_row,
    wait_row,
)

__all__ = ["LEDGER_ENV", "Ledger", "LedgerBusy", "Placement", "default_ledger_path", "process_alive"]

log = logging.getLogger(__name__)

LEDGER_ENV = "JUPYTER_LLM_MANAGER_LEDGER"
_T = TypeVar("_T")


class LedgerBusy(sqlite3.OperationalError):
    """Another process kept the ledger's write lock for longer than a placement may wait."""


def default_ledger_path() -> Path:
    """``$JUPYTER_LLM_MANAGER_LEDGER``, else ``<jupyter runtime dir>/llm_manager/ledger.sqlite``.

    The default's folder is the user's own (mode 0700, made when the first kernel writes the ledger).
    """
    if os.environ.get(LEDGER_ENV):
        return Path(os.path.expanduser(os.environ[LEDGER_ENV]))
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "llm_manager" / "ledger.sqlite"


def process_alive(pid: int, started: float) -> bool:
    """Whether process ``pid`` still runs and is the one that started at ``started`` (not a reused pid).

    A zombie (killed, not yet reaped by its parent) is dead: its memory is already back.
    """
    try:
        process = psutil.Process(pid)
        return abs(process.create_time() - started) < 1.0 and process.status() != psutil.STATUS_ZOMBIE
    except (psutil.Error, OSError, ValueError):
        return False


class Placement:
    """One placement on the machine, inside the ledger's write transaction: read the others, then write."""

    def __init__(self, ledger: Ledger, connection: sqlite3.Connection, member: str) -> None:
        self._ledger = ledger
        self._connection = connection
        self.member = member

    def others(self) -> AllRows:
        """Every other running member's rows, as of this transaction (nobody writes until it ends)."""
        return self._ledger.others_on(self._connection, self.member)

    @property
    def settling(self) -> bool:
        """Whether another member may be missing from what :meth:`others` read (see ``LedgerFile.settling``)."""
        return self._ledger.settling

    def publish(self, member: MemberRow, models: Sequence[ModelRow], copies: Sequence[CopyRow] = ()) -> None:
        """This member's rows, written in this transaction: the others see the reservation with the decision."""
        if member.member not in self._ledger.left:
            execute(self._connection, _publish_statements(member, models, copies))
            self._ledger.wrote(member, models)

    def waits(self) -> list[WaitingRequest]:
        """The rows of requests waiting for models in use, of every running member (this one's too).

        Read after :meth:`others`, which drops the members that are gone.
        """
        rows = self._connection.execute("SELECT w.member, w.request, w.arrival, w.model_id, w.holds, w.needs "
                                        "FROM waits w JOIN members m ON w.member = m.member").fetchall()
        return [found for found in map(wait_row, rows) if found is not None]

    def record_wait(self, waiting: WaitingRequest) -> None:
        """This member's request waits for other kernels' models in use: the others see what it holds and needs."""
        if self.member not in self._ledger.left:
            self._connection.execute(
                "INSERT OR REPLACE INTO waits VALUES (?, ?, ?, ?, ?, ?, ?)",
                (self.member, waiting.request, waiting.arrival, waiting.model_id, json.dumps(sorted(waiting.holds)),
                 json.dumps(sorted(waiting.needs)), time.time()))

    def forget_wait(self, request: int) -> None:
        self._connection.execute("DELETE FROM waits WHERE member = ? AND request = ?", (self.member, request))


class Ledger(LedgerFile):
    """What members write to the ledger and read from it (see the module docstring)."""

    # -- one placement: one write transaction ------------------------------------------------------

    @contextmanager
    def placement(self, member: str, wait: float) -> Iterator[Placement]:
        """Hold the ledger's write lock for one placement: read the others, decide, write this member's rows.

        No other kernel reads the ledger inside a placement of its own, or
        writes at all, until this one commits; what the block raises rolls it
        back. :class:`LedgerBusy` when another process kept the lock for
        ``wait`` seconds (a stopped process): then nothing was read or written.
        """
        with self._lock:
            connection = self._attempt(partial(self._begin_placement, deadline=time.monotonic() + wait), None)
            if connection is None:
                raise LedgerBusy("the ledger is closed")
            try:
                yield Placement(self, connection, member)
                connection.execute("COMMIT")
            except BaseException:
                _roll_back(connection)
                self._seen = None  # what was read inside may have been rolled back
                raise

    def _begin_placement(self, connection: sqlite3.Connection, deadline: float) -> sqlite3.Connection:
        """``BEGIN IMMEDIATE`` and every row read at once: a file damaged since says so here, where the ledger
        can still be recreated, not in the middle of the placement (or at its commit)."""
        _begin(connection, deadline)
        try:
            self._read_all(connection)
        except BaseException:
            _roll_back(connection)
            raise
        return connection

    def _last_reading(self, connection: sqlite3.Connection) -> bool:
        """Read every member's rows through ``connection``, still open on a lost file: they are what is carried.
        Whether that worked (a file written over in place cannot be read)."""
        try:
            _roll_back(connection)
            self._read_all(connection)
        except sqlite3.Error as error:
            log.debug("the lost ledger %s could not be read a last time: %s", self.path, error)
            return False
        return True

    # -- what this member writes -----------------------------------------------------------------

    def publish(self, member: MemberRow, models: Sequence[ModelRow], copies: Sequence[CopyRow] = ()) -> None:
        """This member's row, its models and the copies it lends, replacing what it published before (never after
        it left)."""
        statements = _publish_statements(member, models, copies)
        with self._lock:
            if member.member not in self.left:
                self._attempt(lambda connection: transaction(connection, statements), None)
                self.wrote(member, models)

    def wrote(self, member: MemberRow, models: Sequence[ModelRow]) -> None:
        """This connection replaced ``member``'s rows: the rows last read say so too (its own commits do not
        move ``data_version``, so they would otherwise look current while lacking them). Lock held."""
        if self._seen is not None:
            version, members, old_models, requests = self._seen
            self._seen = (version, [m for m in members if m.member != member.member] + [member],
                          [m for m in old_models if m.member != member.member] + list(models), requests)

    def publish_current(self, read: Callable[[], tuple[MemberRow, Sequence[ModelRow], Sequence[CopyRow]]]) -> None:
        """Publish what ``read()`` says now, read under this ledger's lock: two publishers of one member
        (the publisher thread, a placement) never write an older picture over a newer one."""
        with self._lock:
            self.publish(*read())

    def leave(self, member: str) -> None:
        """This member is gone: its rows go, and a publish still on its way is dropped."""
        with self._lock:
            self.left.add(member)
            self._seen = None
            self._attempt(lambda connection: transaction(connection, _leave_statements(member)), None)

    def enqueue(self, member: str, model_id: str, needed: Mapping[str, int], priority: int,
                request: int | None = None) -> int:
        """A request of this member waits for capacity: its place in the machine-wide queue.

        ``request``: its id in this member, whose row of what it waits for (if any) learns that place.
        """
        def insert(connection: sqlite3.Connection) -> int:
            transaction(connection, [
                ("INSERT INTO requests (member, model_id, needed, priority, since) VALUES (?, ?, ?, ?, ?)",
                 (member, model_id, json.dumps(dict(needed)), priority, time.time()), False),
                ("UPDATE waits SET arrival = last_insert_rowid() WHERE member = ? AND request = ?", (member, request),
                 False)])
            arrival = int(connection.execute("SELECT last_insert_rowid()").fetchone()[0])
            self._queued[arrival] = self._identity
            return arrival

        return self._attempt(insert, 0)

    def requeue(self, arrival: int, needed: Mapping[str, int]) -> None:
        """A waiting request now needs other room (another placement or context): its place stays."""
        self._in_its_file(arrival, "UPDATE requests SET needed = ? WHERE arrival = ?", (json.dumps(dict(needed)),
                                                                                       arrival))

    def dequeue(self, arrival: int) -> None:
        self._in_its_file(arrival, "DELETE FROM requests WHERE arrival = ?", (arrival,))
        self._queued.pop(arrival, None)

    def _in_its_file(self, arrival: int, statement: str, parameters: Sequence[object]) -> None:
        """Change a queued request, only in the file it was queued in: a ledger recreated since numbers its
        requests anew, and that number may now be another member's request."""
        def change(connection: sqlite3.Connection) -> None:
            if self._queued.get(arrival, self._identity) == self._identity:
                connection.execute(statement, parameters)

        self._attempt(change, None)

    def forget_wait(self, member: str, request: int) -> None:
        """A request of ``member`` no longer waits for other kernels' models (served, refused, given up)."""
        self._run("DELETE FROM waits WHERE member = ? AND request = ?", (member, request))

    def _run(self, statement: str, parameters: Sequence[object] = ()) -> list[tuple]:
        return self._attempt(lambda connection: connection.execute(statement, parameters).fetchall(), [])

    # -- what every member reads ---------------------------------------------------------------------

    def others(self, member: str) -> AllRows:
        """Every other running member's rows: members, models, waiting requests (in arrival order).

        Read in one transaction, so the three agree, and read again only when
        another connection has written since (``PRAGMA data_version``). A
        member whose process is gone is dropped on the way. Where there is no
        ledger (yet, or any more), the others as last read that still run
        (see :mod:`.recollection`); nothing is created to read.
        """
        with self._lock:
            found = self._attempt(lambda connection: self.others_on(connection, member), None, create=False)
            return found if found is not None else self._present(([], [], []), member)

    def recalled(self, member: str) -> AllRows:
        """The other members as last read that still run: what counts while the ledger cannot be read."""
        return _of_others(self.recollection.recalled(_still_there), member)

    def others_on(self, connection: sqlite3.Connection, member: str) -> AllRows:
        """:meth:`others` on ``connection``, maybe inside a placement's transaction (caller holds the lock)."""
        members, models, requests = self._read_all(connection)
        gone = {row.member for row in members if row.member != member and not process_alive(row.pid, row.started)}
        if gone:
            statements = [s for left in gone for s in _leave_statements(left)]
            if connection.in_transaction:
                execute(connection, statements)
            else:
                transaction(connection, statements)
            self.left |= gone
            self._seen = None
        living = [row for row in members if row.member not in gone]
        return self._present((living, models, requests), member)

    def _present(self, rows: AllRows, member: str) -> AllRows:
        """``rows`` (read, members that are gone dropped) with the members carried over a lost ledger, less
        ``member``'s own."""
        return _of_others(self.recollection.merged(rows, _still_there), member)

    def _read_all(self, connection: sqlite3.Connection) -> AllRows:
        """Every row, as last read when no other connection has committed since (caller holds the lock)."""
        version = connection.execute("PRAGMA data_version").fetchone()[0]
        if self._seen is not None and self._seen[0] == version:
            return self._seen[1:]
        inside = connection.in_transaction
        if not inside:
            connection.execute("BEGIN")
        try:
            rows = (self._checked(connection, "SELECT * FROM members", member_row),
                    self._checked(connection, "SELECT * FROM models", model_row),
                    self._checked(connection, "SELECT * FROM requests ORDER BY arrival", request_row))
        finally:
            if not inside and connection.in_transaction:  # an error may have ended it: that error is the one to see
                connection.execute("COMMIT")
        self._seen = (version, *rows)
        self.recollection.remember(rows)
        return rows

    def _checked(self, connection: sqlite3.Connection, query: str, parse: Callable[[Sequence], _T]) -> list[_T]:
        """The rows of ``query`` that are what this version writes; each other row is ignored, with one
        warning per row (as long as this ledger is open)."""
        rows = []
        for row in connection.execute(query):
            try:
                rows.append(parse(row))
            except BadRow as error:
                said = f"{query.split()[3]}: {error} in {excerpt(repr(row), 300)}"
                if said not in self._bad_rows:
                    self._bad_rows.add(said)
                    log.warning("the ledger %s has a row this version cannot read; it is ignored (%s)", self.path,
                                said)
        return rows

    def copies(self, members: Iterable[MemberRow]) -> list[CopyRow]:
        """The copies ``members`` lend (running members, as :meth:`others` read them); one short read."""
        present = {row.member for row in members}
        if not present:
            return []
        nothing: list[tuple] = []
        rows = self._attempt(lambda connection: connection.execute(
            "SELECT member, key, share, context, borrowers FROM copies").fetchall(), nothing, create=False)
        return [found for found in map(copy_row, rows) if found is not None and found.member in present]

    def members(self) -> list[MemberRow]:
        """The members whose process runs; the others' rows are dropped on the way."""
        return self.others("")[0]  # no member is called "": every row is checked

    def models(self) -> list[ModelRow]:
        """The models of the members whose process runs."""
        return self.others("")[1]

    def requests(self) -> list[RequestRow]:
        return self.others("")[2]

    def exists(self) -> bool:
        """Whether there is a ledger file to read (a reader never makes one)."""
        with self._lock:
            return self._attempt(lambda connection: True, False, create=False)

    def waits(self) -> list[WaitingRequest]:
        """The rows of requests waiting for models other kernels use (what their threads lease, what they need)."""
        rows = self._run("SELECT member, request, arrival, model_id, holds, needs FROM waits")
        return [found for found in map(wait_row, rows) if found is not None]


def _still_there(row: MemberRow) -> bool:
    """Whether a member known only from an earlier reading still holds what it held: its process runs, and
    its socket is still there (a member that left removed it; a stopped one keeps it)."""
    return process_alive(row.pid, row.started) and (not row.address or os.path.exists(row.address))


def _of_others(rows: AllRows, member: str) -> AllRows:
    """The rows of the members in ``rows`` but ``member``: models and requests without a member row go."""
    members, models, requests = rows
    present = {r.member for r in members if r.member != member}
    return ([r for r in members if r.member in present], [r for r in models if r.member in present],
            [r for r in requests if r.member in present])


def _begin(connection: sqlite3.Connection, deadline: float) -> sqlite3.Connection:
    """``BEGIN IMMEDIATE``, tried again while another connection writes, until ``deadline`` (monotonic).

    The first page is read at once: a file that is no database any more says so here, where the ledger can
    still be recreated, not in the middle of the placement.
    """
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            try:
                connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
            return connection
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if time.monotonic() >= deadline:
                raise LedgerBusy(f"another process has held the ledger's write lock for more than "
                                 f"{BUSY_S:g} s ({error})") from None


def _roll_back(connection: sqlite3.Connection) -> None:
    """End the transaction left open, if any; a file that fails even that is being dropped anyway."""
    try:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
    except sqlite3.Error as error:
        log.debug("could not roll back on the ledger: %s", error)


def _publish_statements(member: MemberRow, models: Sequence[ModelRow], copies: Sequence[CopyRow]) -> list[Statement]:
    return [
        ("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?, ?)",
         (member.member, member.pid, member.started, member.kernel, member.notebook, member.address, member.seen),
         False),
        ("DELETE FROM models WHERE member = ?", (member.member,), False),
        ("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
         [(m.member, m.key, m.model_id, m.device, m.bytes, m.state, int(m.pinned), m.leases, m.last_used,
           m.priority, int(m.protected)) for m in models], True),
        ("DELETE FROM copies WHERE member = ?", (member.member,), False),
        ("INSERT OR REPLACE INTO copies VALUES (?, ?, ?, ?, ?)",
         [(c.member, c.key, c.share, c.context, json.dumps(c.borrowers)) for c in copies], True),
    ]


def _leave_statements(member: str) -> list[Statement]:
    return [(f"DELETE FROM {table} WHERE member = ?", (member,), False)
            for table in ("members", "models", "requests", "copies", "waits")]
