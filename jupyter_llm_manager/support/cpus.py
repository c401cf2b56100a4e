"""How many threads a computation on the CPU should run: the physical cores other work leaves idle.

llama.cpp's threads, and torch's OpenMP threads, wait for one another at
every step, spinning: one thread on a core that other work holds stalls them
all (on two cores with the other one busy, llama.cpp made 21 tokens/s with two
threads and 117 with one). So a computation gets the physical cores this
process may use (:func:`core_budget`: its affinity, within a container's CPU
quota), but no more than the CPUs idle when it starts (:class:`ThreadChoice`).

Reading "idle" takes two looks at the CPUs' busy time some time apart. That
time is never spent waiting in a request: a choice reads the CPUs over the
time its model was idle since its last request, or else the
:class:`CpuSampler`'s looks, taken by a background thread while some model
may need them (it imports nothing and only reads ``/proc``, so it never races
the first import of torch).
"""

from __future__ import annotations

import collections
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from pathlib import Path

from .system import psutil

__all__ = ["SAMPLER", "CpuSampler", "CpuSnapshot", "SamplerHold", "ThreadChoice", "core_budget", "cpu_snapshot",
           "idle_cpus", "usable_cores"]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity), not the machine's count."""
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def core_budget() -> int:
    """The most threads a computation should run: the physical cores among the usable ones, within the CPU quota.

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


class SamplerHold:
    """Keeps a :class:`CpuSampler` looking until :meth:`release` (or until it is garbage-collected)."""

    def __init__(self, sampler: CpuSampler) -> None:
        self._release = weakref.finalize(self, sampler._release)

    def release(self) -> None:
        self._release()  # a finalizer runs once: a second release does nothing


class CpuSampler:
    """Recent looks at the CPUs, taken every ``period`` seconds by a background thread while something holds it.

    :meth:`idle` compares the CPUs now with a look between a quarter and half
    a second old (or an older one of at least ``SHORTEST`` seconds, just after
    the sampler started), counting this process's own CPU time as idle: it is
    about to compute, so its own work (a model loading, a request before this
    one) takes nothing from the next computation. Its thread
    (``jlm-cpu-sampler``) belongs to the process, not to a manager: it runs
    while some loaded model holds the sampler and stops with the last hold.
    The clocks are injectable for tests, and ``period=None`` takes no thread
    (tests call :meth:`sample`).
    """

    PERIOD = 0.25
    SHORTEST = 0.05  # a shorter time says too little (the kernel counts CPU time in 10 ms ticks)
    LONGEST = 2.0  # an older look says nothing about now

    def __init__(self, snapshot: Callable[[], CpuSnapshot | None] = cpu_snapshot,
                 own: Callable[[], float] = time.process_time, period: float | None = PERIOD) -> None:
        self._snapshot = snapshot
        self._own = own
        self._period = period
        keep = math.ceil(self.LONGEST / period) + 2 if period else 16
        self._looks: collections.deque[tuple[CpuSnapshot, float]] = collections.deque(maxlen=keep)
        self._lock = threading.Lock()
        self._holders = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self) -> SamplerHold:
        """Look at the CPUs now, and keep looking until the returned hold is released."""
        self.sample()
        with self._lock:
            self._holders += 1
            if self._period is not None and not self.running:
                self._stop = threading.Event()
                self._thread = threading.Thread(target=self._run, args=(self._stop,), name="jlm-cpu-sampler",
                                                daemon=True)
                self._thread.start()
        return SamplerHold(self)

    def _release(self) -> None:
        with self._lock:
            self._holders = max(0, self._holders - 1)
            if self._holders == 0:
                self._stop.set()

    @property
    def holders(self) -> int:
        """How many holds keep it looking."""
        return self._holders

    @property
    def running(self) -> bool:
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._stop.is_set()

    def _run(self, stop: threading.Event) -> None:
        assert self._period is not None
        while not stop.wait(self._period):
            self.sample()

    def sample(self) -> None:
        """Take a look now."""
        now = self._snapshot()
        if now is not None:
            own = self._own()
            with self._lock:
                self._looks.append((now, own))

    def idle(self, now: CpuSnapshot) -> float | None:
        """The CPUs other processes left idle up to ``now``, from a recent look; ``None`` when there is none yet."""
        own = self._own()
        with self._lock:
            looks = [(look, spent) for look, spent in self._looks
                     if self.SHORTEST <= now[0] - look[0] <= self.LONGEST and len(look[1]) == len(now[1])]
        if not looks:
            return None
        window = self._period or self.PERIOD
        before, spent = next((entry for entry in reversed(looks) if now[0] - entry[0][0] >= window), looks[0])
        seconds = now[0] - before[0]
        return min(float(len(now[1])), idle_cpus(before, now) + max(0.0, own - spent) / seconds)


#: The process's one sampler: llama.cpp's and torch's thread choices read the same looks.
SAMPLER = CpuSampler()


class ThreadChoice:
    """The threads of one computation that runs request after request: :func:`core_budget`, within the idle CPUs.

    A request gets one thread per whole CPU of idle capacity, where three
    quarters of a CPU count as a whole one. The CPUs are read over the time
    the computation was idle since its last request ended, when that was
    between 50 ms and 2 s ago; otherwise from the sampler's recent looks.
    Requests back to back keep the last count. Nothing here waits: without
    any reading yet (the first load, the sampler just started), the count is
    the last one, at first the whole budget. The clock and the sampler are
    injectable for tests.
    """

    LOOK_SECONDS = CpuSampler.SHORTEST
    FRESH_SECONDS = 2.0
    _SPARE = 0.25  # a CPU three quarters idle takes a thread

    def __init__(self, cores: int | None = None, *, snapshot: Callable[[], CpuSnapshot | None] = cpu_snapshot,
                 sampler: CpuSampler | None = None) -> None:
        self.cores = cores or core_budget()
        self.last = self.cores
        self._read = False  # whether ``last`` came from a reading
        self._snapshot = snapshot
        self._sampler = sampler if sampler is not None else SAMPLER
        self._hold: SamplerHold | None = None
        self._idle_since: CpuSnapshot | None = None
        self._lock = threading.Lock()

    def hold(self) -> ThreadChoice:
        """Keep the sampler looking while this choice may be asked (until :meth:`close`)."""
        if self._hold is None:
            self._hold = self._sampler.hold()
        return self

    def close(self) -> None:
        hold, self._hold = self._hold, None
        if hold is not None:
            hold.release()

    def choose(self) -> int:
        """The threads for the request starting now (the computation is not running)."""
        with self._lock:
            now, since = self._snapshot(), self._idle_since
            self._idle_since = None
            if now is None:
                return self.cores
            age = now[0] - since[0] if since is not None else math.inf
            idle: float | None
            if since is not None and self.LOOK_SECONDS <= age <= self.FRESH_SECONDS:
                idle = idle_cpus(since, now)
            elif age < self.LOOK_SECONDS and self._read:
                return self.last  # back to back: too short a time to read
            else:
                idle = self._sampler.idle(now)
            if idle is None:
                return self.last
            self.last, self._read = max(1, min(self.cores, math.floor(idle + self._SPARE))), True
            return self.last

    def finished(self) -> None:
        """The computation is idle from now on: what the CPUs do until the next request is other work."""
        with self._lock:
            self._idle_since = self._snapshot()
