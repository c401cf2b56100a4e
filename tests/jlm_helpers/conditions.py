"""Waiting on a condition another thread or process makes true, never on a fixed sleep."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def until(check: Callable[[], T], timeout: float = 15.0, *, interval: float = 0.01) -> T:
    """Poll ``check()`` until it is true or ``timeout`` seconds have passed; its last value (falsy: timed out).

    For state that another thread or process changes (a manager publishing from its own thread, a child
    kernel): the test asserts the returned value.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() >= deadline:
            return value
        time.sleep(interval)
