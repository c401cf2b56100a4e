"""Keep Ctrl-C out of the few steps that must finish once begun.

Freeing a model changes the books, releases memory and emits an event; an
interrupt in the middle would leave the books and the events disagreeing.
:func:`interrupts_deferred` holds a SIGINT back until the block ends, then
raises ``KeyboardInterrupt`` as usual. Only the main thread receives SIGINT,
so elsewhere it does nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["interrupts_deferred"]


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Run the block to its end; a Ctrl-C that arrives meanwhile is raised right after it."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.signal(signal.SIGINT, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received and callable(previous):
        previous(signal.SIGINT, None)  # the handler that was installed decides: usually KeyboardInterrupt
