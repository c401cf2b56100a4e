"""The machine's placement lock: one kernel at a time reads the ledger, decides and writes its reservation.

The ledger is a record, not a lock: two kernels that both read it before
either has written would both see the same room free and both take it. A
request therefore holds this lock (``flock`` on ``<ledger>.lock``, mode 0600,
refused when another user owns it, as the ledger is) from reading the others
to publishing its reservation, a millisecond or two. The system releases it
when the process ends, however it ends. A holder that keeps it longer than
:data:`WAIT_S` (a stopped process) is not waited for: the placement goes ahead
without it, as it would without cooperation, with a warning in the log.
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
WAIT_S = 5.0


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
            if held:  # released here, not at close: a child forked meanwhile shares the descriptor
                fcntl.flock(descriptor, fcntl.LOCK_UN)
            os.close(descriptor)


def _open(path: Path) -> int | None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)  # before the ledger's first write makes it
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        log.debug("no placement lock at %s (%s): placing without it", path, error)
        return None
    if os.fstat(descriptor).st_uid != os.geteuid():
        os.close(descriptor)
        log.debug("the placement lock %s belongs to another user: placing without it", path)
        return None
    return descriptor


def _take(descriptor: int, deadline: float) -> bool:
    pause = 0.0005
    while True:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() >= deadline:
                log.warning("another kernel has held the machine's placement lock for %g s (a stopped "
                            "process?): placing without it", WAIT_S)
                return False
            time.sleep(pause)  # a holder keeps it for a millisecond or two
            pause = min(pause * 2, 0.01)
        except OSError as error:
            log.debug("the placement lock failed (%s): placing without it", error)
            return False
