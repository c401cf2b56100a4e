"""What a spec may tell llama.cpp through ``load_kwargs``, and how many threads it runs with.

Some options are the manager's: the file (``source``), the context
(``max_context``, which the estimate and the budget count), the device
(placement), embeddings (``mode``), the log. Writing them in ``load_kwargs``
would load something other than what was planned, or crash the process
(``n_threads: 100000``). So ``n_ctx`` is taken into ``max_context``, thread
counts are checked against the cores this process may use, and the others
are refused with what to write instead.

Without ``n_threads`` in ``load_kwargs``, :class:`ThreadChoice` picks the
threads of each request. llama.cpp's threads wait for one another at every
step, spinning: one thread on a core that other work holds stalls them all
(on two cores with the other one busy: 21 tokens/s with two threads, 117
with one). So a request gets the physical cores this process may use
(within a container's CPU quota), but no more than the CPUs idle when it
starts.
"""

from __future__ import annotations

import math
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

from ...config.spec import ModelSpec
from ...errors import ConfigurationError
from ...support.units import brief
from .validation import check_load_kwargs

__all__ = ["MAX_CONTEXT_TOKENS", "CpuSnapshot", "ThreadChoice", "core_budget", "cpu_snapshot", "idle_cpus",
           "normalized", "usable_cores"]

#: The largest context accepted (llama.cpp models train up to about a million tokens).
MAX_CONTEXT_TOKENS = 1 << 21

_OWNED = {
    "model_path": "the file is the spec's source",
    "embedding": "write mode: embed",
    "pooling_type": "write mode: embed (the manager mean-pools)",
    "n_gpu_layers": "the device is the manager's placement: write device: cpu or cuda",
    "main_gpu": "the device is the manager's placement: write device: cuda:N",
    "tensor_split": "the device is the manager's placement: write device: cuda:N",
    "verbose": "llama.cpp's log goes to the jupyter_llm_manager.backends.llama_cpp.backend logger",
    "lora_path": "register the adapter as its own model: adapter=FILE, base=ID",
    "lora_base": "register the adapter as its own model: adapter=FILE, base=ID",
    "lora_scale": "register the adapter as its own model: adapter=FILE, base=ID",
}
_THREADS = ("n_threads", "n_threads_batch")
_SIZES = ("n_batch", "n_ubatch")


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity), not the machine's count."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def core_budget() -> int:
    """The most threads llama.cpp should run: the physical cores among the usable ones, within the CPU quota.

    Two hyper-threads of one core share its arithmetic units, and a
    container's quota (cgroup ``cpu.max``) throttles every thread past it.
    """
    usable = usable_cores()
    logical = psutil.cpu_count() or usable
    physical = psutil.cpu_count(logical=False) or logical
    cores = max(1, usable * min(physical, logical) // logical)
    quota = _cpu_quota()
    return max(1, min(cores, quota)) if quota else cores


def _cpu_quota() -> int | None:
    """Whole CPUs a cgroup's quota allows this process (v2 ``cpu.max``, v1 ``cfs_quota_us``); ``None``: no quota."""
    for quota_file, period_file in (("/sys/fs/cgroup/cpu.max", None),
                                    ("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", "/sys/fs/cgroup/cpu/cpu.cfs_period_us")):
        try:
            words = Path(quota_file).read_text().split()
            if period_file is not None:
                words.append(Path(period_file).read_text().strip())
            quota, period = int(words[0]), int(words[1])
        except (OSError, ValueError, IndexError):  # "max" (no quota), no such file, or not a cgroup file
            continue
        if quota > 0 and period > 0:
            return max(1, math.ceil(quota / period))
    return None


#: A moment's CPU use: the monotonic time, and the busy seconds so far of each CPU this process may use.
CpuSnapshot = tuple[float, tuple[float, ...]]
_BUSY_FIELDS = ("user", "nice", "system", "irq", "softirq", "steal")


def cpu_snapshot() -> CpuSnapshot | None:
    """The busy seconds of each usable CPU now (``None`` where the system does not say)."""
    try:
        per_cpu = psutil.cpu_times(percpu=True)
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else range(len(per_cpu))
    except (OSError, AttributeError):
        return None
    busy = tuple(sum(getattr(per_cpu[cpu], name, 0.0) for name in _BUSY_FIELDS) for cpu in cpus
                 if cpu < len(per_cpu))
    return time.monotonic(), busy


def idle_cpus(before: CpuSnapshot, after: CpuSnapshot) -> float:
    """How many of the usable CPUs were idle between two snapshots (each counts from 0 to 1)."""
    seconds = after[0] - before[0]
    if seconds <= 0 or len(before[1]) != len(after[1]):
        return float(len(after[1]))
    return sum(min(1.0, max(0.0, 1.0 - (b - a) / seconds)) for a, b in zip(before[1], after[1]))


class ThreadChoice:
    """The threads of one llama.cpp model, chosen for each request: :func:`core_budget`, within the idle CPUs.

    A request gets one thread per whole CPU of idle capacity, where three
    quarters of a CPU count as a whole one. The CPUs are read over the time the model was idle since its last
    request ended (between 50 ms and 2 s ago), else over a 50 ms look taken
    now. The clock, the snapshots and the look's wait are injectable for tests.
    """

    LOOK_SECONDS = 0.05
    FRESH_SECONDS = 2.0
    _SPARE = 0.25  # a CPU three quarters idle takes a thread

    def __init__(self, cores: int | None = None, *, snapshot: Callable[[], CpuSnapshot | None] = cpu_snapshot,
                 wait: Callable[[float], None] = time.sleep) -> None:
        self.cores = cores or core_budget()
        self.last = self.cores
        self._snapshot = snapshot
        self._wait = wait
        self._idle_since: CpuSnapshot | None = None
        self._lock = threading.Lock()

    def choose(self) -> int:
        """The threads for the request starting now (the model is not computing)."""
        with self._lock:
            now, since = self._snapshot(), self._idle_since
            self._idle_since = None
            if now is None:
                return self.cores
            age = now[0] - since[0] if since is not None else math.inf
            if age < self.LOOK_SECONDS:
                return self.last  # back to back: too short a time to read
            if since is None or age > self.FRESH_SECONDS:
                self._wait(self.LOOK_SECONDS)
                since, now = now, self._snapshot() or now
            self.last = max(1, min(self.cores, math.floor(idle_cpus(since, now) + self._SPARE)))
            return self.last

    def finished(self) -> None:
        """The model is idle from now on: what the CPUs do until the next request is other work."""
        with self._lock:
            self._idle_since = self._snapshot()


def normalized(spec: ModelSpec) -> ModelSpec:
    """``spec`` with ``load_kwargs.n_ctx`` as its ``max_context``; a :class:`ConfigurationError` for the rest."""
    options = dict(spec.load_kwargs)
    for key, instead in _OWNED.items():
        if key in options:
            raise _refused(spec, key, f"the manager sets it: {instead}")
    check_load_kwargs(spec)  # every other option: known to llama.cpp, of its type and range
    cores = usable_cores()
    for key in _THREADS:
        if key in options and not _whole(options[key], 1, cores):
            raise _refused(spec, key, f"got {brief(options[key])}, but this process may use {cores} core(s): "
                                      f"give 1 to {cores}, or leave it out (the manager chooses)")
    for key in _SIZES:
        if key in options and not _whole(options[key], 1, MAX_CONTEXT_TOKENS):
            raise _refused(spec, key, f"got {brief(options[key])}: give a whole number of tokens, 1 or more")
    if "n_ctx" not in options:
        return spec
    context = options.pop("n_ctx")
    if not _whole(context, 16, MAX_CONTEXT_TOKENS):
        raise _refused(spec, "n_ctx", f"got {brief(context)}: write max_context: a whole number of tokens "
                                      f"(16 to {MAX_CONTEXT_TOKENS:,}) or auto")
    if spec.max_context is not None and spec.max_context != context:
        raise _refused(spec, "n_ctx", f"it says {context} but max_context says {spec.max_context}: keep "
                                      "max_context only")
    return spec.with_changes(max_context=context, load_kwargs=options)


def _whole(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _refused(spec: ModelSpec, key: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"load_kwargs.{key}: {why}", model_id=spec.id, key=f"load_kwargs.{key}")
