"""A registered model id's status row, what an unload freed, and what a garbage collection found."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Literal

from ..support.units import bytes_text, format_bytes, format_duration

__all__ = ["GarbageReport", "ModelState", "StatusRow", "UnloadReport"]

#: A model id's state (see :mod:`jupyter_llm_manager.manager.instances` for the machine behind it).
ModelState = Literal["registered", "waiting", "loading", "loaded", "unloading", "failed", "held"]


@dataclass(frozen=True)
class StatusRow:
    """One registered model id as the manager sees it now."""

    id: str
    instance: str
    aliases: tuple[str, ...]
    backend: str
    device: str
    state: ModelState
    in_use: int
    pinned: bool
    priority: int
    estimated_bytes: int | None
    actual_bytes: int | None
    last_used: float | None
    expires_at: float | None
    error: str | None
    remote: bool = False
    trust_remote_code: bool = False
    keep_alive: float | None = None
    load_seconds: float | None = None
    details: Mapping[str, Any] = field(default_factory=dict)
    protected: bool = False
    kind: str = "llm"
    mode: str | None = None
    waiting_for: str | None = None
    queue_position: int | None = None
    idle_seconds: float | None = None  # since the last use, when the row was made (monotonic clock)
    expires_in: float | None = None  # keep-alive left when the row was made (monotonic clock)
    import_seconds: float | None = None  # first imports of heavy libraries its load paid for (not in load_seconds)
    reachable: bool | None = None  # remote models: whether the last call reached the server (None: no call yet)
    context: int | None = None  # tokens of context of the loaded model (the n_ctx chosen by max_context: auto)
    progress: str | None = None  # what a load in flight is doing now ("converting … from GGUF")
    #: What a call without arguments gets: the spec's ``generation:`` over the model files' recommended
    #: settings over the backend's default repetition penalty (``repetition_window``: the tokens it looks at).
    generation: Mapping[str, Any] = field(default_factory=dict)
    base: str | None = None  # a LoRA adapter: the model id it runs on
    adapter: str | None = None  # a LoRA adapter: its folder, Hub id or GGUF file
    shares_base: bool | None = None  # True: lives on its base's loaded model; False: an instance of its own
    #: What this id's instance counts against its device budgets: measured weights (and adapter slice) plus
    #: the KV reserve for its context where the cache is allocated per call; the estimate before it loads.
    counted_bytes: int | None = None
    #: Memory of an unloaded instance of this id that did not come back (a variable still holds the model):
    #: counted against the budget until it is collected; ``held_by`` names what holds it.
    held_bytes: int | None = None
    held_by: tuple[str, ...] = ()
    #: Who is answered from this copy now: other notebooks (or scripts, or ``serve``) borrowing it.
    lent_to: tuple[str, ...] = ()

    @classmethod
    def of(cls, **values: Any) -> StatusRow:
        """The row ``StatusRow(**values)`` makes, without the frozen dataclass's ``object.__setattr__`` call
        per field (0.7 against 10 us a row alone; the first ``status()`` builds one per id). Every field
        without a default must be given; no unknown one may be."""
        missing = _REQUIRED - values.keys()
        unknown = values.keys() - _FIELDS
        if missing or unknown:
            raise TypeError(f"StatusRow.of: missing {sorted(missing)}, unknown {sorted(unknown)}")
        row = object.__new__(cls)
        kept = row.__dict__
        kept.update(_DEFAULTS)
        for name in _FACTORIES.keys() - values.keys():
            kept[name] = _FACTORIES[name]()
        kept.update(values)
        return row

    @property
    def base_str(self) -> str:
        """``on qwen (shared)`` or ``on smol (own instance)`` for an adapter; empty otherwise."""
        if self.base is None:
            return ""
        return f"on {self.base} ({'shared' if self.shares_base else 'own instance'})"

    estimated_str = bytes_text("estimated_bytes")
    actual_str = bytes_text("actual_bytes")
    counted_str = bytes_text("counted_bytes")
    held_str = bytes_text("held_bytes")

    def last_used_str(self, now: float | None = None) -> str:
        """``12s ago``; empty when never used. ``now`` (wall clock) is only for rows kept a while."""
        if self.last_used is None:
            return ""
        idle = self.idle_seconds if now is None and self.idle_seconds is not None else \
            (now or time.time()) - self.last_used
        return f"{format_duration(idle)} ago"

    def expires_in_str(self, now: float | None = None) -> str:
        """Keep-alive left (``4m 10s``), ``never`` or empty when not loaded."""
        if self.state != "loaded":
            return ""
        if self.expires_at is None:
            return "in use" if self.in_use else ("pinned" if self.pinned else "never")
        left = self.expires_in if now is None and self.expires_in is not None else self.expires_at - (now or time.time())
        return format_duration(left)

    @property
    def generation_str(self) -> str:
        """``temperature 0 · repetition_penalty 1.1 (last 64 tokens) · max_new_tokens 256``."""
        settings = dict(self.generation)
        window = settings.pop("repetition_window", "")
        parts = [f"{name} {value}" for name, value in settings.items()]
        if window != "" and "repetition_penalty" in settings:
            covered = f"last {window} tokens" if window else "the whole answer"
            parts[list(settings).index("repetition_penalty")] += f" ({covered})"
        return " · ".join(parts)

    @property
    def state_str(self) -> str:
        """The state with what matters next to it: ``loaded (in use, pinned)``, ``waiting (#2: ...)``."""
        if self.state == "waiting" and self.waiting_for:
            return f"waiting (#{self.queue_position or 1}: {self.waiting_for})"
        if self.state == "loading" and self.progress:
            return f"loading ({self.progress})"
        notes = [note for flag, note in ((self.in_use, "in use"), (self.pinned, "pinned"),
                                         (self.protected, "protected"), (self.lent_to, self.lent_to_str),
                                         (self.held_bytes, self.held_note)) if flag]
        return f"{self.state} ({', '.join(notes)})" if notes else self.state

    @property
    def held_note(self) -> str:
        """``2.0 GB still held by variable 'm'``: an unloaded copy that did not go ("" when none)."""
        if not self.held_bytes:
            return ""
        return f"{self.held_str} still held by {', '.join(self.held_by) or 'an unknown reference'}"

    @property
    def lent_to_str(self) -> str:
        """``lent to B.ipynb, pid 4242`` ("" when no one borrows this copy)."""
        return f"lent to {', '.join(self.lent_to)}" if self.lent_to else ""


_FIELDS = frozenset(f.name for f in fields(StatusRow))
_REQUIRED = frozenset(f.name for f in fields(StatusRow) if f.default is MISSING and f.default_factory is MISSING)
_DEFAULTS = {f.name: f.default for f in fields(StatusRow) if f.default is not MISSING}
_FACTORIES = {f.name: f.default_factory for f in fields(StatusRow) if f.default_factory is not MISSING}


@dataclass(frozen=True)
class UnloadReport:
    """What one unload or eviction freed, and whether the model object is really gone."""

    model_id: str
    instance: str
    reason: str
    freed_bytes: int
    seconds: float
    collected: bool
    holders: tuple[str, ...] = ()
    held_bytes: int = 0  # what did not come back (the model object lives on): still counted against the budget
    adapters: tuple[str, ...] = ()  # the adapters unloaded with this base (their bytes are in ``freed_bytes``)

    freed_str = bytes_text("freed_bytes")
    held_str = bytes_text("held_bytes")

    def __str__(self) -> str:
        what = f"{self.model_id!r}" + (f" and its adapters {', '.join(map(repr, self.adapters))}"
                                        if self.adapters else "")
        text = f"Unloaded {what} ({self.reason}): freed {self.freed_str} in {self.seconds:.2f} s"
        if not self.collected:
            held_by = ", ".join(self.holders) if self.holders else "an unknown reference"
            text += f"; the model object is still alive, held by {held_by}"
            if self.held_bytes:
                text += f" ({self.held_str} stay counted against the budget until it is let go)"
            elif self.freed_bytes:
                text += " (its memory came back all the same)"
        return text


@dataclass(frozen=True)
class GarbageReport:
    """What a garbage collection freed: unloaded models that were still alive, device caches; what still lives.

    ``used_before``/``used_after`` are system-wide device figures (other
    processes change them too); ``process_before``/``process_after`` this
    kernel's resident memory: secondary facts, not the manager's doing.
    """

    used_before: Mapping[str, int]
    used_after: Mapping[str, int]
    lingering: Mapping[str, tuple[str, ...]]  # unloaded model id -> what still holds it
    seconds: float
    collected: tuple[str, ...] = ()  # unloaded models that were still alive and are gone now
    process_before: int | None = None
    process_after: int | None = None

    @property
    def freed_bytes(self) -> dict[str, int]:
        return {d: max(0, self.used_before[d] - self.used_after.get(d, self.used_before[d]))
                for d in self.used_before}

    def __str__(self) -> str:
        if self.collected:
            lines = [(f"Freed {len(self.collected)} unloaded model(s) that were still alive: "
                     f"{', '.join(map(repr, self.collected))}.")]
        elif self.lingering:
            lines = ["No unloaded model could be freed: each is still held (below)."]
        else:
            lines = ["No unloaded model was waiting to be freed."]
        returned = {d: b for d, b in self.freed_bytes.items() if d != "cpu" and b}
        lines += [f"{device}: {format_bytes(size)} of cached memory returned to the device."
                  for device, size in returned.items()]
        for model_id, holders in self.lingering.items():
            lines.append(f"{model_id!r} was unloaded but is still alive, held by "
                         f"{', '.join(holders) or 'an unknown reference'}.")
        if self.process_before is not None and self.process_after is not None:
            lines.append(f"(This kernel's process memory went from {format_bytes(self.process_before)} to "
                         f"{format_bytes(self.process_after)}; everything it runs changes that figure.)")
        return "\n".join(lines)
