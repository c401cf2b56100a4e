"""The manager: one kernel-resident :class:`~.facade.LLMManager`, a facade over parts with one job each.

Where each thing is decided:

- ``facade``: the public API; it checks arguments and wires the parts, nothing more;
- ``state``: every mutable fact (registry, instances, wait queue, settings) and the one lock; leases;
- ``instances``: a loaded copy of weights and its state machine;
- ``registration``: registering ids, aliases, pins and tasks, and saving them to the file;
- ``policy/``: pure decisions, a snapshot in and a frozen plan out: whether a model fits and what
  to evict (``fit``), where it goes (``placement``), the whole decision and its simulation
  (``decision``: what admission executes is what ``plan()`` reports);
- ``planning``: the facts a decision needs, and ``plan()``;
- ``admission``: leases, loading when needed, the fair wait queue (``waiting``) with deadlines;
- ``loading``: running an admitted load; ``evictions``: limits, keep-alive and manual unloads;
- ``freeing``: letting go of memory for real; ``keep_alive``: the reaper thread and limits;
- ``generations``: the one generation path (lease, events, backend call, release) and streams;
- ``handles``: what the manager hands out; ``status``: rows and device reports; ``warmup``: preloads.

The lock rule. One lock, the state's (``state.ManagerState.lock``), guards the
registry, the instance table and every instance's fields, the wait queue,
the settings and the load failures. It is held only for bookkeeping: never
while a backend loads, generates, estimates or frees, never while a device is
probed or a module imported, and never while a subscriber runs: events are
emitted after it is released, so a subscriber may call back into the
manager. Waiting (for room, for leases to end) waits on the state's condition,
on the manager's clock, which releases the lock. The other locks (the event
bus's, the estimate and backend caches', NVML's) are leaves: nothing is
called while they are held.

Invariants, each checked by tests: the manager holds the only strong
reference to a loaded model; ids with equal instance keys share one
instance; a leased or pinned instance is never evicted, nor a protected one
for a request of lower priority; the count cap and the budgets hold, except
while a load turns out heavier than its estimate and nothing may be evicted.
"""

from typing import Any

__all__ = ["LLMManager", "get_manager"]


def __getattr__(name: str) -> Any:
    """``from jupyter_llm_manager.manager import LLMManager`` keeps working, without importing the parts early."""
    if name == "LLMManager":
        from .facade import LLMManager

        return LLMManager
    if name == "get_manager":
        from .kernel import get_manager

        return get_manager
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
