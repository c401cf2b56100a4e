"""Changes to the registry: registering, unregistering, aliases and pins, with their events.

Replacing or forgetting an id whose instance no other id shares unloads that
instance (an instance that is still loading is freed as soon as its load
ends, since no id reaches it any more). Requests waiting for an id that
disappears are woken and get :class:`ModelNotFoundError`.
"""

from __future__ import annotations

from collections.abc import Callable

from . import policy
from .backends import Backend
from .books import Books
from .config import ConfigFile
from .errors import ConfigurationError, ModelInUseError
from .events import EventBus
from .evictions import Evictions, Victims
from .instances import Instance
from .spec import ModelSpec, check_model_id

__all__ = ["Catalog"]


class Catalog:
    """Registers ids, aliases and pins in the books and tells subscribers."""

    def __init__(self, books: Books, bus: EventBus, backends: Callable[[str], Backend], evictions: Evictions) -> None:
        self._books = books
        self._bus = bus
        self._backends = backends
        self._evictions = evictions

    def register(self, spec: ModelSpec, *, overwrite: bool) -> ModelSpec:
        """Register ``spec`` (a no-op when the same spec is registered; else ``overwrite`` is needed)."""
        self._backends(spec.backend).validate(spec)
        model_id = spec.id
        books = self._books
        with books.lock:
            registry = books.registry
            old = registry.specs.get(model_id)
            if old == spec and model_id not in registry.aliases:
                return old
            if not overwrite and (old is not None or model_id in registry.aliases):
                what = "an alias" if model_id in registry.aliases else "a model with another spec"
                raise ConfigurationError(f"{model_id!r} is already {what}; pass overwrite=True to replace it",
                                         model_id=model_id)
            stale = books.instances.get(registry.key_left_behind(model_id, spec) or "")
            self._check_idle(stale)
            registry.put(spec)
            books.failures.pop(model_id, None)
            victims = self._take_out(stale)
            books.touch()
        self._evictions.release(victims)
        self._bus.emit("registered", model_id, message=spec.location)
        return spec

    def unregister(self, name: str) -> None:
        """Forget a model (or an alias); its instance goes when no other id shares it."""
        books = self._books
        with books.lock:
            registry = books.registry
            stale = None
            if name not in registry.aliases:
                canonical = registry.resolve(name)
                key = registry.keys[canonical]
                stale = None if registry.shared(key, besides=canonical) else books.instances.get(key)
                self._check_idle(stale)
                books.failures.pop(canonical, None)
            registry.remove(name)
            victims = self._take_out(stale)
            books.touch()
        self._evictions.release(victims)
        self._bus.emit("unregistered", name)

    def alias(self, name: str, target: str, *, overwrite: bool) -> None:
        check_model_id(name)
        books = self._books
        with books.lock:
            books.registry.set_alias(name, target, overwrite=overwrite)
            books.touch()
        self._bus.emit("registered", name, message=f"alias of {target}")

    def set_pinned(self, model_id: str, pinned: bool) -> bool:
        """Pin or unpin; returns whether limits wait to be restored (an unpin may allow it)."""
        books = self._books
        with books.lock:
            canonical = books.registry.resolve(model_id)
            (books.registry.pinned.add if pinned else books.registry.pinned.discard)(canonical)
            books.touch()
            pending = books.limits_pending
        self._bus.emit("pinned" if pinned else "unpinned", canonical)
        return pending and not pinned

    def adopt(self, config: ConfigFile) -> None:
        """A configuration file's models and aliases, for a new manager (nothing is loaded yet)."""
        for spec in config.models.values():
            self._backends(spec.backend)  # created now, so the books never wait on an import
        books = self._books
        with books.lock:
            for spec in config.models.values():
                books.registry.put(spec)
            books.registry.aliases.update(config.aliases)  # all at once: an alias may name a later alias
            for name in config.aliases:
                books.registry.resolve(name)  # an alias to an unknown id, or a cycle, is a configuration error

    def _check_idle(self, stale: Instance | None) -> None:
        if stale is not None and stale.leases:
            raise ModelInUseError(self._books.name_of(stale), stale.leases)

    def _take_out(self, stale: Instance | None) -> Victims:
        """The stale instance out of the books (a loading one is freed when its load ends). Lock held."""
        if stale is None or stale.state != "loaded":
            return []
        return self._evictions.take_out([policy.Eviction(stale.key, stale.spec.id, "manual", stale.total_bytes)])
