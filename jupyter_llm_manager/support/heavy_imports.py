"""The one guard every use of a heavy library (torch, transformers, llama_cpp) passes.

Importing torch takes seconds the first time. A thread that looks at
``sys.modules["torch"]`` while another thread is still inside that first
import sees a half-initialized module (``partially initialized module 'torch'
has no attribute 'cuda'``). So:

- :func:`heavy` imports under one lock: a second thread waits for the first
  to finish, and nobody ever gets a half-imported module from it;
- :func:`ready` gives a module only once its import has finished, and never
  starts one: what background threads (device probes, the dashboard, the
  JupyterLab bridge) use;
- the seconds a first import took are recorded for the thread that paid them
  (:func:`take_report`), so a first load can say "imported torch in 6.4 s"
  apart from the load itself.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from types import ModuleType

__all__ = ["heavy", "ready", "take_report"]

_lock = threading.RLock()
_finished: set[str] = set()
_local = threading.local()


def heavy(name: str) -> ModuleType:
    """``import name``, at most one thread at a time; the first import's time is recorded for this thread."""
    if name in _finished:
        return sys.modules[name]
    with _lock:
        if name not in _finished:
            already = name in sys.modules and not _initializing(sys.modules[name])
            started = time.perf_counter()
            importlib.import_module(name)
            if not already:
                _report().append((name, time.perf_counter() - started))
            _finished.add(name)
    return sys.modules[name]


def ready(name: str) -> ModuleType | None:
    """The module when its import has finished (through :func:`heavy` or not); never imports anything."""
    if name in _finished:
        return sys.modules.get(name)
    module = sys.modules.get(name)
    if module is None or _initializing(module) or not _lock.acquire(blocking=False):
        return None  # not imported, or being imported right now
    try:
        return module if name in sys.modules and not _initializing(module) else None
    finally:
        _lock.release()


def take_report() -> list[tuple[str, float]]:
    """The first imports this thread paid for since the last call: (module, seconds), then forgets them."""
    report = _report()
    taken = list(report)
    report.clear()
    return taken


def _report() -> list[tuple[str, float]]:
    if not hasattr(_local, "report"):
        _local.report = []
    report: list[tuple[str, float]] = _local.report
    return report


def _initializing(module: ModuleType) -> bool:
    """Whether Python is still executing the module's code (its spec says so while it imports)."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))
