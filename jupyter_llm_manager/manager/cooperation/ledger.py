"""The ledger: what every manager of this user on this machine holds, in one SQLite file (WAL).

A record, never the owner: each manager writes its own rows (its member row,
its models, its waiting requests and what those wait for) and reads the others'; each frees its own
models. A placement reads the others, decides and writes its reservation in
one write transaction (:meth:`Ledger.placement`, ``BEGIN IMMEDIATE`` as
diskcache does), so two kernels asking at the same instant never both see
the same room free. The file is created with mode 0600 and refused when
another user owns it. Members whose process is gone (or whose pid now
belongs to a process started later) are dropped by whoever reads them. A
connection is never shared with a process forked from this one.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import psutil

from .ledger_file import BUSY_S, LedgerFile, Statement, execute, transaction
from .rows import MemberRow, ModelRow, RequestRow, WaitingRequest, member_row, model_row, request_row, wait_row

__all__ = ["LEDGER_ENV", "Ledger", "LedgerBusy", "Placement", "default_ledger_path", "process_alive"]

log = logging.getLogger(__name__)

LEDGER_ENV = "JUPYTER_LLM_MANAGER_LEDGER"
#: The ledger's three tables: members, their models, the waiting requests (in arrival order).
AllRows = tuple[list[MemberRow], list[ModelRow], list[RequestRow]]


class LedgerBusy(sqlite3.OperationalError):
    """Another process kept the ledger's write lock for longer than a placement may wait."""


def default_ledger_path() -> Path:
    """``$JUPYTER_LLM_MANAGER_LEDGER``, else ``<jupyter runtime dir>/llm_manager_ledger.sqlite``."""
    if os.environ.get(LEDGER_ENV):
        return Path(os.path.expanduser(os.environ[LEDGER_ENV]))
    from jupyter_core.paths import jupyter_runtime_dir

    return Path(jupyter_runtime_dir()) / "llm_manager_ledger.sqlite"


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

    def publish(self, member: MemberRow, models: Sequence[ModelRow]) -> None:
        """This member's rows, written in this transaction: the others see the reservation with the decision."""
        if member.member not in self._ledger.left:
            execute(self._connection, _publish_statements(member, models))
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
            if self._closed:
                raise LedgerBusy("the ledger is closed")
            connection = self._connect()
            _begin(connection, time.monotonic() + wait)
            try:
                yield Placement(self, connection, member)
                connection.execute("COMMIT")
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                self._seen = None  # what was read inside may have been rolled back
                raise

    # -- what this member writes -----------------------------------------------------------------

    def publish(self, member: MemberRow, models: Sequence[ModelRow]) -> None:
        """This member's row and its models, replacing what it published before (never after it left)."""
        with self._lock:
            if member.member not in self.left:
                self._attempt(lambda connection: transaction(connection, _publish_statements(member, models)), None)
                self.wrote(member, models)

    def wrote(self, member: MemberRow, models: Sequence[ModelRow]) -> None:
        """This connection replaced ``member``'s rows: the rows last read say so too (its own commits do not
        move ``data_version``, so they would otherwise look current while lacking them). Lock held."""
        if self._seen is not None:
            version, members, old_models, requests = self._seen
            self._seen = (version, [m for m in members if m.member != member.member] + [member],
                          [m for m in old_models if m.member != member.member] + list(models), requests)

    def publish_current(self, read: Callable[[], tuple[MemberRow, Sequence[ModelRow]]]) -> None:
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
            return int(connection.execute("SELECT last_insert_rowid()").fetchone()[0])

        return self._attempt(insert, 0)

    def requeue(self, arrival: int, needed: Mapping[str, int]) -> None:
        """A waiting request now needs other room (another placement or context): its place stays."""
        self._run("UPDATE requests SET needed = ? WHERE arrival = ?", (json.dumps(dict(needed)), arrival))

    def dequeue(self, arrival: int) -> None:
        self._run("DELETE FROM requests WHERE arrival = ?", (arrival,))

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
        member whose process is gone is dropped on the way.
        """
        with self._lock:
            nothing: AllRows = ([], [], [])
            return self._attempt(lambda connection: self.others_on(connection, member), nothing)

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
        present = {row.member for row in members if row.member != member} - gone
        return ([row for row in members if row.member in present], [row for row in models if row.member in present],
                [row for row in requests if row.member in present])

    def _read_all(self, connection: sqlite3.Connection) -> AllRows:
        """Every row, as last read when no other connection has committed since (caller holds the lock)."""
        version = connection.execute("PRAGMA data_version").fetchone()[0]
        if self._seen is not None and self._seen[0] == version:
            return self._seen[1:]
        inside = connection.in_transaction
        if not inside:
            connection.execute("BEGIN")
        try:
            rows = ([member_row(row) for row in connection.execute("SELECT * FROM members")],
                    [model_row(row) for row in connection.execute("SELECT * FROM models")],
                    [request_row(row) for row in connection.execute("SELECT * FROM requests ORDER BY arrival")])
        finally:
            if not inside and connection.in_transaction:  # an error may have ended it: that error is the one to see
                connection.execute("COMMIT")
        self._seen = (version, *rows)
        return rows

    def members(self) -> list[MemberRow]:
        """The members whose process runs; the others' rows are dropped on the way."""
        return self.others("")[0]  # no member is called "": every row is checked

    def models(self) -> list[ModelRow]:
        return [model_row(r) for r in self._run("SELECT * FROM models")]

    def requests(self) -> list[RequestRow]:
        return [request_row(r) for r in self._run("SELECT * FROM requests ORDER BY arrival")]

    def waits(self) -> list[WaitingRequest]:
        """The rows of requests waiting for models other kernels use (what their threads lease, what they need)."""
        rows = self._run("SELECT member, request, arrival, model_id, holds, needs FROM waits")
        return [found for found in map(wait_row, rows) if found is not None]


def _begin(connection: sqlite3.Connection, deadline: float) -> None:
    """``BEGIN IMMEDIATE``, tried again while another connection writes, until ``deadline`` (monotonic)."""
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if "locked" not in str(error) and "busy" not in str(error):
                raise
            if time.monotonic() >= deadline:
                raise LedgerBusy(f"another process has held the ledger's write lock for more than "
                                 f"{BUSY_S:g} s ({error})") from None


def _publish_statements(member: MemberRow, models: Sequence[ModelRow]) -> list[Statement]:
    return [
        ("INSERT OR REPLACE INTO members VALUES (?, ?, ?, ?, ?, ?, ?)",
         (member.member, member.pid, member.started, member.kernel, member.notebook, member.address, member.seen),
         False),
        ("DELETE FROM models WHERE member = ?", (member.member,), False),
        ("INSERT OR REPLACE INTO models VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
         [(m.member, m.key, m.model_id, m.device, m.bytes, m.state, int(m.pinned), m.leases, m.last_used,
           m.priority, int(m.protected)) for m in models], True),
    ]


def _leave_statements(member: str) -> list[Statement]:
    return [(f"DELETE FROM {table} WHERE member = ?", (member,), False) for table in ("members", "models", "requests", "waits")]
