"""How long a caller is willing to wait: checked once, then counted on the monotonic clock.

A wait is a number of seconds (``0``: do not wait), ``math.inf`` or ``None``
(no limit), or a duration text (``"30s"``). NaN and negative numbers are
refused: a NaN deadline would make every comparison false and a wait loop
spin. Deadlines use ``time.monotonic()``, so a wall-clock jump changes nothing.
"""

from __future__ import annotations

import math
import time

from .units import brief, parse_duration

__all__ = ["Deadline", "parse_wait"]


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
    """A point on the monotonic clock; ``remaining()`` is ``None`` when there is no limit."""

    __slots__ = ("_end", "seconds")

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self._end = math.inf if math.isinf(seconds) else time.monotonic() + seconds

    def remaining(self) -> float | None:
        """Seconds left (never negative), or ``None`` for no limit: what ``Condition.wait`` takes."""
        if math.isinf(self._end):
            return None
        return max(self._end - time.monotonic(), 0.0)

    @property
    def expired(self) -> bool:
        return not math.isinf(self._end) and time.monotonic() >= self._end

    def __repr__(self) -> str:
        return f"<Deadline {self.remaining() if not math.isinf(self._end) else 'none'}>"
