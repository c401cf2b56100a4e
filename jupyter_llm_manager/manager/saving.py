"""Saving the manager to its configuration file: every setting, model (with its pin) and alias.

Writes are atomic and merged under a lock file with what other kernels saved
meanwhile (:func:`~jupyter_llm_manager.config.save_config`). Built-in models
are never written, nor a default that points at one.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from ..config.files import default_config_path, save_config
from .state import Books

__all__ = ["Persistence"]


class Persistence:
    """Knows the configuration file of one manager and writes the books into it."""

    def __init__(self, books: Books, path: Path | None) -> None:
        self._books = books
        self.path = path  # the file read, and where save() writes by default

    def save(self, path: str | os.PathLike[str] | None = None, *, models: Sequence[str] | None = None,
             aliases: Sequence[str] | None = None, settings: bool = True) -> Path:
        """Write ``models`` and ``aliases`` (``None``: all), what was removed, and the settings when asked."""
        target = Path(path) if path is not None else (self.path or default_config_path())
        books = self._books
        with books.lock:
            registry = books.registry
            chosen = [i for i in (registry.specs if models is None else models)
                      if not registry.specs[i].builtin and not registry.specs[i].task]
            specs = {i: registry.specs[i].with_changes(pinned=i in registry.pinned) for i in chosen}
            names = {a: registry.aliases[a] for a in (registry.aliases if aliases is None else aliases)
                     if a not in registry.tasks}
            tasks = {name: task.to_mapping(selected=registry.aliases.get(name, "").partition("/")[2] or None)
                     for name, task in registry.tasks.items()} if settings else None
            inference = dict(registry.inference) if settings and registry.inference else None
            removed = set(registry.removed)
            defaults = books.settings.to_mapping() if settings else None
            default = defaults and defaults["default_model"]
            if defaults and default in registry.specs and registry.specs[default].builtin:
                defaults["default_model"] = None  # the built-in default comes back by itself
        written = save_config(target, specs, names, removed=removed, defaults=defaults, tasks=tasks,
                              inference=inference)
        books = self._books
        with books.lock:
            books.registry.removed -= removed
        self.path = self.path or written
        return written
