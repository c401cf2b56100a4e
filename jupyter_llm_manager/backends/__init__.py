"""Backends by name: the built-in ones and those registered by other packages.

``transformers`` runs a model in this kernel; ``llama_cpp`` runs GGUF files
with llama.cpp in this kernel; ``openai`` talks to any OpenAI-compatible server. Other packages add backends through the entry-point
group ``jupyter_llm_manager.backends`` (name = ``module:BackendClass``).
Modules are imported only when their backend is first used.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable
from importlib.metadata import entry_points

from ..errors import ConfigurationError
from .base import Backend, LoadedModel, Placement, TextGenerator, release_frames

__all__ = [
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendCache",
    "LoadedModel",
    "Placement",
    "TextGenerator",
    "available_backends",
    "get_backend",
    "release_frames",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "jupyter_llm_manager.backends"
_BUILTIN = {
    "transformers": "jupyter_llm_manager.backends.transformers.backend:TransformersBackend",
    "openai": "jupyter_llm_manager.backends.openai.backend:OpenAIBackend",
    "llama_cpp": "jupyter_llm_manager.backends.llama_cpp.backend:LlamaCppBackend",
    "loader": "jupyter_llm_manager.backends.loader:LoaderBackend",
    "unavailable": "jupyter_llm_manager.backends.unavailable:UnavailableBackend",
}
_instances: dict[str, Backend] = {}
_lock = threading.Lock()


def available_backends() -> dict[str, str]:
    """Backend name → ``module:Class``, built-in first, then entry points."""
    found = dict(_BUILTIN)
    for point in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(point.name, point.value)
    return found


def get_backend(name: str) -> Backend:
    """The shared instance of the backend called ``name`` (created once; its module imported with no lock held)."""
    with _lock:
        found = _instances.get(name)
    if found is not None:
        return found
    created = _create(name)
    with _lock:  # two threads may create one at once: the first one stored is the one everybody gets
        return _instances.setdefault(name, created)


class BackendCache:
    """One manager's backends by name, created once through ``factory`` (``get_backend`` by default)."""

    def __init__(self, factory: Callable[[str], Backend] = get_backend) -> None:
        self._factory = factory
        self._backends: dict[str, Backend] = {}
        self._lock = threading.Lock()

    def __call__(self, name: str) -> Backend:
        with self._lock:
            backend = self._backends.get(name)
        if backend is None:
            backend = self._factory(name)  # may import a module: never under the lock
            with self._lock:
                backend = self._backends.setdefault(name, backend)
        return backend

    def created(self) -> list[Backend]:
        """The backends used so far (for freeing device caches)."""
        with self._lock:
            return list(self._backends.values())


def _create(name: str) -> Backend:
    known = available_backends()
    if name not in known:
        raise ConfigurationError(f"unknown backend {name!r}; available: {', '.join(sorted(known))}. "
                                 f"Other packages can add one through the {ENTRY_POINT_GROUP!r} entry points.")
    module_name, _, class_name = known[name].partition(":")
    try:
        backend_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError) as error:
        raise ConfigurationError(f"backend {name!r} ({known[name]}) cannot be imported: {error}") from error
    backend = backend_class()
    if not isinstance(backend, Backend):
        raise ConfigurationError(f"backend {name!r} ({known[name]}) is not a jupyter_llm_manager Backend")
    return backend
