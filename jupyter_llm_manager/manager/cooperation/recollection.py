"""What this member last read of the others, kept for when the ledger loses it.

When the ledger's file is deleted, replaced or recreated, or cannot be read
for a while (a full disk, an I/O error), the others' models are still in
memory: counting nobody would let this member load over them. So each member
remembers the others' rows of its last reading, and goes on counting a member
from them until that member has published again in the new file, or its
process is gone.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

from .rows import MemberRow, ModelRow, RequestRow

__all__ = ["AllRows", "Recollection"]

#: The ledger's three tables: members, their models, the waiting requests (in arrival order).
AllRows = tuple[list[MemberRow], list[ModelRow], list[RequestRow]]
Alive = Callable[[MemberRow], bool]


class Recollection:
    """The others' rows as last read, and those carried over a lost ledger (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last: dict[str, tuple[MemberRow, list[ModelRow]]] = {}
        self._carried: dict[str, tuple[MemberRow, list[ModelRow]]] = {}

    def remember(self, rows: AllRows) -> None:
        """A complete reading of the ledger: the members in it need no carrying any more."""
        members, models, _ = rows
        with self._lock:
            self._last = {m.member: (m, [r for r in models if r.member == m.member]) for m in members}
            for member in self._last:
                self._carried.pop(member, None)

    def carry(self) -> None:
        """The ledger was lost: what was last read of the others counts until they publish again."""
        with self._lock:
            self._carried.update(self._last)
            self._last = {}

    def merged(self, rows: AllRows, alive: Alive) -> AllRows:
        """``rows`` read from the ledger, and the carried members not in it whose process still runs."""
        members, models, requests = rows
        present = {m.member for m in members}
        with self._lock:
            for member in [m for m, (row, _) in self._carried.items() if m in present or not alive(row)]:
                del self._carried[member]
            carried = list(self._carried.values())
        return (members + [row for row, _ in carried], models + [r for _, held in carried for r in held], requests)

    def freed(self, member: str, keys: Sequence[str]) -> None:
        """``member`` answered that it freed the models ``keys`` (evicted for this member): they count no more,
        even while it cannot write that in the ledger."""
        gone = set(keys)
        with self._lock:
            for known in (self._last, self._carried):
                if member in known:
                    row, models = known[member]
                    known[member] = (row, [r for r in models if r.key not in gone])

    def recalled(self, alive: Alive) -> AllRows:
        """What is known of the others while the ledger cannot be read: the last reading and what was carried."""
        with self._lock:
            known = {**self._carried, **self._last}
        living = [entry for entry in known.values() if alive(entry[0])]
        return ([row for row, _ in living], [r for _, held in living for r in held], [])
