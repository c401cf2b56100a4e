"""The machine's placement lock: one kernel at a time reads the ledger, decides and writes its reservation.

The ledger is a record, not a lock: two kernels that both read it before
either has written would both see the same room free and both take it. A
request therefore holds this lock (``flock`` on ``<ledger>.lock``, mode 0600)
from reading the others to publishing its reservation, a millisecond or two.
The kernel releases it when the process ends, however it ends. A holder that
keeps it longer than :data:`WAIT_S` (a stopped process) is not waited for: the
placement goes ahead without it, as it would without cooperation.
"""

from __future__ import annotations

import fcntl
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["WAIT_S", "placement_lock"]

log = logging.getLogger(__name__)

#: The longest a placement waits for another kernel's.
WAIT_S = 2.0


@contextmanager
def placement_lock(ledger: Path) -> Iterator[bool]:
    """Hold the placement lock of the ledger at ``ledger`` for the block; yields whether it is held.

    A fresh descriptor each time: ``flock`` excludes other open files, so
    two managers (or two threads) of one process exclude each other too.
    """
    descriptor = _open(Path(f"{ledger}.lock"))
    held = False
    try:
        if descriptor is not None:
            held = _take(descriptor, time.monotonic() + WAIT_S)
        yield held
    finally:
        if descriptor is not None:
            os.close(descriptor)  # releases the lock


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        log.debug("no placement lock at %s (%s): placing without it", path, error)
        return None


def _take(descriptor: int, deadline: float) -> bool:
    pause = 0.0005
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                log.debug("another kernel held the placement lock for %g s: placing without it", WAIT_S)
                return False
            time.sleep(pause)  # a holder keeps it for a millisecond or two
            pause = min(pause * 2, 0.01)
        except OSError as error:
            log.debug("the placement lock failed (%s): placing without it", error)
            return False
