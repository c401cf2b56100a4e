"""The manager: one kernel-resident :class:`~.facade.LLMManager`, a facade over parts with one job each.

Where each thing is decided (docs/architecture.md has the full map):

- ``facade`` and ``api/``: the public API; they check arguments and call one part per job;
  ``wiring``: the composition root (every part made and connected); ``kernel``: the singleton;
- ``state``: every mutable fact (registry, instances, wait queue, settings) and the one lock; leases;
- ``instances``: a loaded copy of weights, its state machine and its turns;
- ``registration`` and ``tasks``: ids, aliases, pins and tasks, and saving them to the file;
- ``policy/``: pure decisions, a snapshot in and a frozen plan out: whether a model fits and what to
  evict (``fit``), where it goes (``placement``), the whole decision with the first-come rule across
  kernels and its simulation (``decision``: what admission executes is what ``plan()`` reports), and
  the reasons (``reasons``);
- ``planning``: the facts a decision needs, and ``plan()``;
- ``admission/``: leases, loading when needed (LoRA adapters as a step), the fair wait queue, deadlines;
- ``unloading/``: evictions, freeing memory for real, the limits kept as the state changes, keep-alive;
- ``adapters/``: the rule for adapters that share their base, their specs, their binding;
- ``cooperation/``: the machine's ledger, placing with the other kernels, answering them;
- ``generations``: the one generation path (lease, events, backend call, release) and streams;
- ``handles``: what the manager hands out; ``status``: rows and device reports.

The lock rule. Locks are taken in this order, never against it: the
ledger's (one placement: SQLite's write lock), the membership's, the
state's (``state.ManagerState.lock``), then leaves. The state's lock guards
the registry, the instance table and every instance's fields, the wait
queue, the settings and the load failures. It is held only for
bookkeeping: never while a backend loads, generates, estimates or frees,
never while a device is probed or a module imported, and never while a
subscriber runs: events are emitted after it is released, so a subscriber
may call back into the manager. Waiting (for room, for leases to end) waits
on the state's condition, on the manager's clock, which releases the lock.
The other locks (the event bus's, the estimate and backend caches', NVML's,
an instance's turns) are leaves: nothing is called while they are held.

Invariants, each checked by tests: the manager holds the only strong
reference to a loaded model, and no thread of it holds the manager strongly;
ids with equal instance keys share one instance; a leased or pinned instance
is never evicted, nor a protected one for a request of lower priority; the
count cap and the budgets hold, except while a load turns out heavier than
its estimate and nothing may be evicted.
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
