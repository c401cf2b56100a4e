"""torch's threads for a generation on the CPU: the physical cores other work leaves idle, unless the user chose.

torch runs a thread per physical core of the machine by default, and its
OpenMP threads spin while they wait for one another. Beside another process
doing the same (another kernel generating, a test suite) both crawl: on two
busy cores 0.7-2.2 tokens/s with the default against 9-10 with one thread.
So a generation (or an embedding) on the CPU runs with the count that
:class:`~jupyter_llm_manager.support.cpus.ThreadChoice` picks from the same
CPU reading as llama.cpp's, set on the thread that computes (torch keeps the
count per thread once a thread has used it: ``%%llm`` streams from a worker
thread) and put back when it ends.

The count is process-wide, so generations that overlap share one choice,
made when the first starts and kept until the last ends. A count the user
chose is never touched: ``OMP_NUM_THREADS`` or ``MKL_NUM_THREADS`` set, or a
``torch.set_num_threads`` call since torch was first seen here (its count
is recorded then, right after this package imports it, and compared).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ...support.cpus import ThreadChoice
from ...support.system import psutil

__all__ = ["TORCH_THREADS", "TorchThreads", "torch_default_threads"]

_USER_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def torch_default_threads() -> int:
    """The count torch starts with when nobody set one: the machine's physical cores."""
    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class TorchThreads:
    """Chooses torch's intra-op threads for the generations of this process (see the module's docstring)."""

    def __init__(self, choice: Callable[[], ThreadChoice] = ThreadChoice,
                 environ: Any = os.environ, default: Callable[[], int] = torch_default_threads) -> None:
        self._make_choice = choice
        self._choice: ThreadChoice | None = None
        self._environ = environ
        self._default = default
        self._lock = threading.Lock()
        self._recorded: int | None = None  # torch's count when first seen
        self._users = False  # torch's count was somebody else's when first seen
        self._active = 0
        self._count: int | None = None  # the count of the generations running now (None: left as it is)

    @property
    def last(self) -> int | None:
        """The count the last choice made (``None``: none made yet)."""
        return self._choice.last if self._choice is not None else None

    def note(self, torch: Any, fresh: bool) -> None:
        """Record torch's count when first seen. ``fresh``: this package imported torch just now, so nobody set it.

        Imported earlier by someone else, the count is taken as torch's own only
        when it is the default; any other was set by the user.
        """
        with self._lock:
            self._note(torch, fresh)

    def users_count(self, torch: Any) -> bool:
        """Whether torch's thread count (on this thread) is the user's: an environment variable, or a call."""
        with self._lock:
            return self._users_count(torch)

    @contextmanager
    def computing(self, torch: Any) -> Iterator[int | None]:
        """Run the body (torch work on the CPU, on this thread) with the chosen count; yields it (None: unchanged)."""
        with self._lock:
            if self._active == 0:
                self._count = None if self._users_count(torch) else self._chooser().choose()
            self._active += 1
            count, restore = self._count, self._recorded
        if count is not None:
            torch.set_num_threads(count)
        try:
            yield count
        finally:
            if count is not None and restore is not None:
                torch.set_num_threads(restore)
            with self._lock:
                self._active -= 1
                if self._active == 0 and self._count is not None:
                    self._chooser().finished()

    def _note(self, torch: Any, fresh: bool) -> None:  # lock held
        if self._recorded is None and not self._users:
            count = torch.get_num_threads()
            if fresh or count == self._default():
                self._recorded = count
            else:
                self._users = True

    def _users_count(self, torch: Any) -> bool:  # lock held
        if any(self._environ.get(name) for name in _USER_VARIABLES):
            return True
        self._note(torch, fresh=False)
        return self._users or torch.get_num_threads() != self._recorded

    def _chooser(self) -> ThreadChoice:
        if self._choice is None:
            self._choice = self._make_choice()
        return self._choice


#: The process's one choice of torch's threads.
TORCH_THREADS = TorchThreads()
