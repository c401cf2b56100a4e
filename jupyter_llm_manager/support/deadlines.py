"""How long a caller is willing to wait, counted on the manager's clock; and waiting on that clock.

A wait is a number of seconds (``0``: do not wait), ``math.inf`` or ``None``
(no limit), or a duration text (``"30s"``). NaN and negative numbers are
refused: a NaN deadline would make every comparison false and a wait loop
spin.

The clock is ``time.monotonic`` unless a manager is given another (tests pass
a fake clock that jumps): a wall-clock jump changes nothing. Every wait with
a deadline goes through :func:`wait_for`, so a fake clock that also has a
``wait(condition, timeout)`` method decides when such a wait ends.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable

from .units import brief, parse_duration

__all__ = ["Clock", "Deadline", "parse_wait", "wait_for"]

#: Monotonic seconds: ``time.monotonic`` or a fake one.
Clock = Callable[[], float]


def parse_wait(value: float | str | None, *, what: str = "wait") -> float:
    """Seconds to wait, ``math.inf`` for no limit; ``ValueError`` for NaN, negatives and garbage."""
    if value is None:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"{what} must be a number of seconds or a duration such as 30s, got {brief(value)}")
    if isinstance(value, (int, float)):
        if math.isnan(value) or value < 0:
            raise ValueError(f"{what} must be a number of seconds >= 0 (math.inf: no limit), got {value!r}")
        return float(value)
    seconds = parse_duration(value)
    return math.inf if seconds is None else seconds


class Deadline:
    """A point on a clock; ``remaining()`` is ``None`` when there is no limit."""

    __slots__ = ("_end", "clock", "seconds", "started")

    def __init__(self, seconds: float, clock: Clock = time.monotonic) -> None:
        self.seconds = seconds
        self.clock = clock
        self.started = clock()
        self._end = math.inf if math.isinf(seconds) else self.started + seconds

    def remaining(self) -> float | None:
        """Seconds left (never negative), or ``None`` for no limit: what ``Condition.wait`` takes."""
        if math.isinf(self._end):
            return None
        return max(self._end - self.clock(), 0.0)

    def elapsed(self) -> float:
        return self.clock() - self.started

    @property
    def expired(self) -> bool:
        return not math.isinf(self._end) and self.clock() >= self._end

    def __repr__(self) -> str:
        return f"<Deadline {self.remaining() if not math.isinf(self._end) else 'none'}>"


def wait_for(condition: threading.Condition, deadline: Deadline) -> None:
    """Wait on ``condition`` (its lock held) until notified or ``deadline`` passes, on the deadline's clock."""
    remaining = deadline.remaining()
    if remaining is not None and remaining <= 0:
        return
    waits_itself = getattr(deadline.clock, "wait", None)
    if callable(waits_itself):
        waits_itself(condition, remaining)
    else:
        condition.wait(remaining)
