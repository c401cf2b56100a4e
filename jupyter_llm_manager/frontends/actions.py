"""What a user can do from any front-end, with one wait and one message each.

The magics, the dashboard, the JupyterLab bridge and the command line call
these, so a button and a line magic wait as long and say the same thing.
Each returns the sentence to show, or raises an
:class:`~jupyter_llm_manager.errors.LLMManagerError` whose message is shown
instead. Front-ends that must not block (buttons, JupyterLab) run them on a
thread of their own.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ModelInUseError
from ..support.units import format_bytes

if TYPE_CHECKING:
    from ..manager.facade import LLMManager
    from ..reports import StatusRow

__all__ = [
    "ACTION_WAIT_S",
    "UNLOAD_POLL_S",
    "WaitingUnloads",
    "configure",
    "free_memory",
    "load",
    "pin",
    "set_default",
    "toggle_pin",
    "unload",
    "unload_all",
    "unload_when_released",
    "unpin",
    "waiting_note",
]

#: How long ``%llm unload`` and Unload all wait for a model in use (a generation, a ``use()`` block).
ACTION_WAIT_S = 30.0
#: A button's Unload of a model in use tries again at each manager event and at least this often (seconds);
#: taking it back (a second click, a Cancel) shows within this time.
UNLOAD_POLL_S = 0.25


def load(manager: LLMManager, model_id: str, *, pin: bool = False) -> str:
    """Load now (waiting for room as the wait_timeout setting allows); ``pin`` pins it too."""
    canonical = manager.resolve(model_id)
    if manager.row(canonical).state == "loaded":
        if pin:
            manager.pin(canonical)
        return f"{canonical!r} is already loaded" + (", now pinned." if pin else ".")
    row = manager.load(model_id, pin=pin).status()
    seconds = f" in {row.load_seconds:.2f} s" if row.load_seconds is not None else ""
    imported = f" (plus {row.import_seconds:.1f} s to import its libraries, once)" if row.import_seconds else ""
    return (f"Loaded {row.id!r} on {row.device}{seconds} ({row.actual_str or 'remote'})"
            + (", pinned" if row.pinned else "") + imported + ".")


def unload(manager: LLMManager, model_id: str) -> str:
    """Unload one model, waiting up to :data:`ACTION_WAIT_S` for it to be released."""
    report = manager.unload(model_id, wait=ACTION_WAIT_S)
    return str(report) if report is not None else f"{manager.resolve(model_id)!r} was not loaded."


def unload_when_released(manager: LLMManager, model_id: str, cancelled: threading.Event) -> str:
    """A button's Unload: unload as soon as the model is released (an answer ends), however long that takes.

    Tried again at each manager event (an answer that ends is one), and at least every
    :data:`UNLOAD_POLL_S` seconds, until ``cancelled`` is set: then the model stays loaded, and the
    sentence says so. Waits in real time, whatever clock the manager runs on.
    """
    changed = threading.Event()
    unsubscribe = manager.subscribe(lambda event: changed.set())
    try:
        while True:
            changed.clear()
            try:
                report = manager.unload(model_id)  # at once, or ModelInUseError while it is in use
            except ModelInUseError:
                if cancelled.is_set():
                    return f"Unload of {manager.resolve(model_id)!r} cancelled: it stays loaded."
                changed.wait(UNLOAD_POLL_S)
                continue
            return str(report) if report is not None else f"{manager.resolve(model_id)!r} was not loaded."
    finally:
        unsubscribe()


class WaitingUnloads:
    """A front-end's Unloads that wait for an answer to end, each of which a second click or a Cancel takes back."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: dict[str, threading.Event] = {}  # model id -> set to take its Unload back

    def start(self, manager: LLMManager, model_id: str) -> Callable[[], str] | None:
        """The action of a new Unload of ``model_id``; ``None`` when one was waiting: that one is taken back now."""
        if self.cancel(model_id):
            return None
        with self._lock:
            cancelled = self._waiting[model_id] = threading.Event()

        def unload() -> str:
            try:
                return unload_when_released(manager, model_id, cancelled)
            finally:
                with self._lock:
                    if self._waiting.get(model_id) is cancelled:
                        del self._waiting[model_id]

        return unload

    def cancel(self, model_id: str) -> bool:
        """Take back the Unload of ``model_id`` (it answers "cancelled" within :data:`UNLOAD_POLL_S`); whether one waited."""
        with self._lock:
            cancelled = self._waiting.pop(model_id, None)
        if cancelled is not None:
            cancelled.set()
        return cancelled is not None

    def cancel_all(self) -> None:
        """Take every waiting Unload back (a front-end that closes)."""
        with self._lock:
            waiting, self._waiting = list(self._waiting.values()), {}
        for cancelled in waiting:
            cancelled.set()


def unload_all(manager: LLMManager) -> str:
    """Unload every model; those still in use after :data:`ACTION_WAIT_S` are left loaded and named."""
    reports = manager.unload_all(wait=ACTION_WAIT_S, skip_in_use=True)
    busy = [row.id for row in manager.status() if row.state == "loaded"]
    if len(reports) == 1:
        lines = [str(reports[0])]
    elif reports:
        each = ", ".join(f"{r.model_id!r} {r.freed_str}" for r in reports)
        freed = format_bytes(sum(r.freed_bytes for r in reports))
        lines = [f"Unloaded {len(reports)} model(s), freed {freed}: {each}."]
        lines += [str(r) for r in reports if not r.collected]  # what still holds them
    else:
        lines = [] if busy else ["Nothing was loaded."]
    if busy:
        lines.append(f"Still in use: {', '.join(busy)} (left loaded).")
    return "\n".join(lines)


def pin(manager: LLMManager, model_id: str) -> str:
    manager.pin(model_id)
    return f"Pinned {manager.resolve(model_id)!r}: it will not be evicted."


def unpin(manager: LLMManager, model_id: str) -> str:
    manager.unpin(model_id)
    return f"Unpinned {manager.resolve(model_id)!r}: it may be evicted again."


def toggle_pin(manager: LLMManager, model_id: str) -> str:
    return (unpin if manager.row(model_id).pinned else pin)(manager, model_id)


def set_default(manager: LLMManager, model_id: str) -> str:
    """The model ``%%llm`` uses when none is named (it must be registered)."""
    manager.resolve(model_id)
    manager.default_model = model_id
    return f"%%llm without a model now uses {model_id!r}."


def waiting_note(row: StatusRow, doing: str) -> str:
    """What an action under way on ``row`` waits for, in a few words ("" when it waits for nothing).

    ``doing`` is what a front-end shows meanwhile ("unloading", "loading").
    Said while the action waits, so an Unload of a model in use is not silent.
    """
    if doing.startswith("unloading"):
        if row.state == "loading":
            return "unloads when its load ends"
        if row.in_use:
            return f"in use ({row.in_use} use{'s' if row.in_use != 1 else ''}): unloads when the answer ends"
    if doing.startswith("loading") and row.state == "waiting":
        return f"waiting for room (#{row.queue_position or 1}){': ' + row.waiting_for if row.waiting_for else ''}"
    return ""


def free_memory(manager: LLMManager) -> str:
    """Collect garbage and empty device caches; what came back, and what still holds unloaded models."""
    return str(manager.collect_garbage())


def configure(manager: LLMManager, name: str, value: Any) -> str:
    """Change one setting (validated; a lowered limit evicts at once)."""
    manager.configure(**{name: value})
    return f"{name} = {getattr(manager, name)}"
