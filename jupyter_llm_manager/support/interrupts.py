"""Keep Ctrl-C out of the few steps that must finish once begun.

Freeing a model changes the state, releases memory and emits an event; an
interrupt in the middle would leave the state and the events disagreeing.
:func:`interrupts_deferred` holds a SIGINT back until the block ends, then
raises ``KeyboardInterrupt`` as usual. Only the main thread receives SIGINT,
so elsewhere it does nothing.

A native library that calls back into Python (llama.cpp's sampler runs a
``logits_processor`` or ``logit_bias`` that way) swallows what the callback
raises: ctypes prints "Exception ignored" and the C code goes on. A Ctrl-C
that lands there would be lost, and a failing processor would be ignored.
:class:`NativeCallbacks` brackets each call into such a library and raises
what its callbacks raised once the call returns.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

__all__ = ["NativeCallbacks", "interrupts_deferred"]


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


class NativeCallbacks:
    """``with NativeCallbacks():`` around one call into a native library: what its Python callbacks raised
    on this thread is raised when the call returns (a Ctrl-C as ``KeyboardInterrupt``, any other error as a
    ``RuntimeError`` naming it) instead of being printed and ignored. Cheap enough to wrap every token."""

    def __enter__(self) -> None:
        _start_watching()

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        raised = _stop_watching()
        if raised is None or kind is not None:  # an error of the call itself goes first
            return
        if isinstance(raised, KeyboardInterrupt):
            raise KeyboardInterrupt from None
        raise RuntimeError(f"a callback failed: {type(raised).__name__}: {raised}") from raised


_lock = threading.Lock()
_watched: dict[int, list[BaseException]] = {}  # thread ident -> what its callbacks raised
_previous_hook: Callable[[Any], Any] | None = None


def _start_watching() -> None:
    global _previous_hook
    with _lock:
        _watched[threading.get_ident()] = []
        if sys.unraisablehook is not _swallowed_error:
            _previous_hook, sys.unraisablehook = sys.unraisablehook, _swallowed_error


def _stop_watching() -> BaseException | None:
    global _previous_hook
    with _lock:
        raised = _watched.pop(threading.get_ident(), [])
        if not _watched and sys.unraisablehook is _swallowed_error and _previous_hook is not None:
            sys.unraisablehook, _previous_hook = _previous_hook, None
    return raised[0] if raised else None


def _swallowed_error(unraisable: Any) -> None:
    """``sys.unraisablehook`` while a thread is watched: keep what a callback raised on a watched thread,
    pass everything else to the hook that was there before."""
    with _lock:
        raised = _watched.get(threading.get_ident())
        previous = _previous_hook or sys.__unraisablehook__
    if raised is not None and unraisable.exc_value is not None and "callback" in (unraisable.err_msg or ""):
        raised.append(unraisable.exc_value)
        return
    previous(unraisable)
