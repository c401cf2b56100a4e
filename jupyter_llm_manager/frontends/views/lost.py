"""What a notebook is told about a model it lost where it did not ask: one line per loss.

Another notebook asked for the room, the keep-alive ran out, a request in
another thread needed the room, or another notebook's JupyterLab panel asked
for an unload: ``smollm2 was evicted by other.ipynb to make room, 2 min ago;
it will load again``. The next ``%%llm`` footer says it once
(:mod:`..notebook.lost`); the JupyterLab panel shows the recent ones while
the model stays unloaded (:func:`recent_losses`).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence

from ...events import Event

__all__ = ["is_loss", "loss_note", "recent_losses"]

#: Why a model was evicted, as the note says it (``other_kernel`` names the notebook that asked).
_WHY = {
    "lru": "to make room for another model (least recently used)",
    "budget": "to keep within the memory budget",
    "keep_alive": "when its keep-alive ran out",
}
#: The events that say whether a model is still lost: it was loaded again, or unloaded some other way since.
_DECIDING = frozenset({"loaded", "evicted", "unloaded"})
#: How long the panel keeps saying that a model was lost (while it is not loaded again).
RECENT_S = 15 * 60.0
#: At most this many losses in the panel, the newest first.
RECENT_LIMIT = 5


def is_loss(event: Event) -> bool:
    """An eviction, or an unload another notebook asked for (this notebook's own unloads it knows of)."""
    return bool(event.model_id) and (event.kind == "evicted"
                                     or (event.kind == "unloaded" and event.message.startswith("for ")))


def loss_note(event: Event, now: float | None = None) -> str:
    """``smollm2 was evicted by other.ipynb to make room, 2 min ago; it will load again``."""
    ago = _ago((time.time() if now is None else now) - event.time)
    if event.kind == "unloaded":  # another notebook asked (its JupyterLab panel)
        requester = event.message.removeprefix("for ").strip()
        return f"{event.model_id} was unloaded by {requester}, {ago}; it will load again"
    if event.reason == "other_kernel":
        requester = event.message.removeprefix("for ").strip() or "another notebook"
        why = f"by {requester} to make room"
    else:
        why = _WHY.get(event.reason or "", f"({event.reason})")
    return f"{event.model_id} was evicted {why}, {ago}; it will load again"


def recent_losses(events: Sequence[Event], loaded: Iterable[str], now: float | None = None) -> list[str]:
    """The notes for models lost in the last :data:`RECENT_S` that are not loaded again, newest first."""
    now = time.time() if now is None else now
    loaded_now = set(loaded)
    notes: list[str] = []
    seen: set[str] = set()
    for event in reversed(events):
        if now - event.time > RECENT_S or len(notes) >= RECENT_LIMIT:
            break
        if event.model_id in seen or event.model_id is None or event.kind not in _DECIDING:
            continue
        seen.add(event.model_id)  # the newest load or unload of a model says whether it is still lost
        if is_loss(event) and event.model_id not in loaded_now:
            notes.append(loss_note(event, now))
    return notes


def _ago(seconds: float) -> str:
    if seconds < 5:
        return "just now"
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 90 * 60:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.0f} h ago"
