"""Named conversations for ``%%llm --chat NAME``: the messages sent so far, per name."""

from __future__ import annotations

import threading

__all__ = ["ChatSessions"]

Message = dict[str, str]


class ChatSessions:
    """Message histories by name. Only complete turns are recorded."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._chats: dict[str, list[Message]] = {}

    def messages(self, name: str, prompt: str, system: str | None = None) -> list[Message]:
        """The history of ``name`` with ``prompt`` appended (``system`` replaces the system message)."""
        with self._lock:
            history = [dict(m) for m in self._chats.get(name, [])]
        if system is not None:
            history = [{"role": "system", "content": system}] + [m for m in history if m["role"] != "system"]
        return history + [{"role": "user", "content": prompt}]

    def record(self, name: str, sent: list[Message], answer: str) -> None:
        """Keep what was sent and the answer as the new history of ``name``."""
        with self._lock:
            self._chats[name] = [dict(m) for m in sent] + [{"role": "assistant", "content": answer}]

    def reset(self, name: str | None = None) -> list[str]:
        """Forget one conversation, or all; returns the names forgotten."""
        with self._lock:
            names = [name] if name is not None else list(self._chats)
            return [n for n in names if self._chats.pop(n, None) is not None]

    def names(self) -> list[str]:
        with self._lock:
            return list(self._chats)

    def turns(self, name: str) -> int:
        with self._lock:
            return sum(1 for m in self._chats.get(name, []) if m["role"] == "user")
