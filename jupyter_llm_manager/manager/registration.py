"""Changes to the registry (registering, unregistering, aliases, pins, tasks) with their events; and saving them.

Replacing or forgetting an id whose instance no other id shares unloads that
instance (an instance that is still loading is freed as soon as its load
ends, since no id reaches it any more). Requests waiting for an id that
disappears are woken and get :class:`ModelNotFoundError`. :class:`Persistence`
writes the registry and the settings into the configuration file.
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Callable, Sequence
from pathlib import Path

from ..backends import Backend
from ..config.files import ConfigFile, default_config_path, save_config
from ..config.spec import ModelSpec, check_model_id
from ..errors import ConfigurationError, ModelInUseError
from ..events import EventBus
from ..models.builtin import BUILTIN_ID
from .adapters import AdapterSpecs
from .instances import Instance
from .policy import fit as policy
from .state import ManagerState
from .unloading.evictions import Evictions, Victims

__all__ = ["Persistence", "Registration"]


def _runs_nothing(spec: ModelSpec, backend: Backend) -> bool:
    """Loading ``spec`` runs no code the file names and contacts no server (a Hub id would download)."""
    downloads = spec.backend in ("transformers", "llama_cpp") and spec.local_path is None
    return not (backend.remote or spec.loader or spec.trust_remote_code or downloads)


class Registration:
    """Registers ids, aliases and pins in the state and tells subscribers."""

    def __init__(self, state: ManagerState, bus: EventBus, backends: Callable[[str], Backend], evictions: Evictions,
                 adapters: AdapterSpecs) -> None:
        self._state = state
        self._bus = bus
        self._backends = backends
        self._evictions = evictions
        self._adapters = adapters

    def register(self, spec: ModelSpec, *, overwrite: bool) -> ModelSpec:
        """Register ``spec`` (a no-op when the same spec is registered; else ``overwrite`` is needed)."""
        spec = self._checked(self._adapters.derive(spec))
        model_id = spec.id
        state = self._state
        with state.lock:
            registry = state.registry
            old = registry.specs.get(model_id)
            if old == spec and model_id not in registry.aliases:
                return old
            if spec.base is not None and self._adapters.on(model_id):
                raise ConfigurationError(f"{model_id!r} is the base of {', '.join(map(repr, self._adapters.on(model_id)))}"
                                         ": it cannot become an adapter itself; unregister those first",
                                         model_id=model_id)
            if not overwrite and (old is not None or model_id in registry.aliases):
                what = "an alias" if model_id in registry.aliases else "a model with another spec"
                raise ConfigurationError(f"{model_id!r} is already {what}; pass overwrite=True to replace it",
                                         model_id=model_id)
            stale = state.instances.get(registry.key_left_behind(model_id, spec) or "")
            self._check_idle(stale)
            registry.put(spec)
            for adapter in self._adapters.rederived(spec):  # they load the way their base now does
                registry.put(adapter)
            state.failures.pop(model_id, None)
            victims = self._take_out(stale)
            state.touch(everyone=True)
        self._evictions.release(victims)
        self._bus.emit("registered", model_id, message=spec.location)
        return spec

    def _checked(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` as its backend takes it, validated (a :class:`ConfigurationError` otherwise)."""
        backend = self._backends(spec.backend)
        if spec.mode not in backend.modes:
            raise ConfigurationError(f"the {spec.backend} backend has no {spec.mode} mode; its modes: "
                                     f"{', '.join(sorted(backend.modes))}", model_id=spec.id, key="mode")
        spec = backend.normalize(spec)
        backend.validate(spec)
        return spec

    def unregister(self, name: str) -> None:
        """Forget a model (or an alias); its instance goes when no other id shares it."""
        state = self._state
        with state.lock:
            registry = state.registry
            stale = None
            if name not in registry.aliases:
                canonical = registry.resolve(name)
                if self._adapters.on(canonical):
                    raise ConfigurationError(f"{canonical!r} is the base of "
                                             f"{', '.join(map(repr, self._adapters.on(canonical)))}: unregister "
                                             "those adapters first", model_id=canonical)
                key = registry.keys[canonical]
                stale = None if registry.shared(key, besides=canonical) else state.instances.get(key)
                self._check_idle(stale)
                state.failures.pop(canonical, None)
            registry.remove(name)
            victims = self._take_out(stale)
            state.touch(everyone=True)
        self._evictions.release(victims)
        self._bus.emit("unregistered", name)

    def alias(self, name: str, target: str, *, overwrite: bool) -> None:
        check_model_id(name)
        state = self._state
        with state.lock:
            state.registry.set_alias(name, target, overwrite=overwrite)
            state.touch(everyone=True)
        self._bus.emit("registered", name, message=f"alias of {target}")

    def set_pinned(self, model_id: str, pinned: bool) -> bool:
        """Pin or unpin; returns whether limits wait to be restored (an unpin may allow it)."""
        state = self._state
        with state.lock:
            canonical = state.registry.resolve(model_id)
            state.registry.pin(canonical, pinned)
            state.touch(everyone=True)
            pending = state.limits_pending
        self._bus.emit("pinned" if pinned else "unpinned", canonical)
        return pending and not pinned

    def preload_ids(self) -> tuple[list[str], list[str]]:
        """The models to warm up, in the file's order, and those marked ``preload`` that load at first use.

        Reading a configuration runs no code and contacts nothing: only local
        files loaded by the built-in local backends, without repository code,
        are warmed up. A ``loader:``, ``trust_remote_code``, a server or a Hub
        id waits for the user's first use.
        """
        state = self._state
        with state.lock:
            marked = [spec for spec in state.registry.specs.values() if spec.preload]
        warm = [spec.id for spec in marked if _runs_nothing(spec, self._backends(spec.backend))]
        return warm, [spec.id for spec in marked if spec.id not in warm]

    def read(self, config: ConfigFile) -> None:
        """A configuration file's models, aliases, tasks and inference block, replacing ids of the same name."""
        for spec in sorted(config.models.values(), key=lambda spec: spec.base is not None):  # bases first
            self.register(spec, overwrite=True)
        for name, target in config.aliases.items():
            self.alias(name, target, overwrite=True)
        state = self._state
        with state.lock:
            state.registry.tasks.update(config.tasks)
            state.registry.inference.update(config.inference)
            state.touch(everyone=True)

    # -- names ----------------------------------------------------------------------------------

    def spec(self, model_id: str) -> ModelSpec:
        """The spec an id or alias resolves to."""
        state = self._state
        with state.lock:
            return state.registry.specs[state.registry.resolve(model_id)]

    def key(self, model_id: str) -> str:
        """The instance key an id or alias resolves to."""
        state = self._state
        with state.lock:
            return state.registry.keys[state.registry.resolve(model_id)]

    def ids(self) -> list[str]:
        state = self._state
        with state.lock:
            return state.registry.names()

    def check_file_default(self, config: ConfigFile) -> None:
        """A file's ``defaults: default_model``, before the file is read: it may name the file's own models."""
        if "default_model" in config.settings_given:
            self.check_default_model(config.settings.default_model, path=config.path,
                                     also=[*config.models, *config.aliases, *config.tasks])

    def check_default_model(self, name: str | None, *, also: Sequence[str] = (), path: Path | None = None) -> None:
        """Refuse a ``default_model`` that names nothing: an id, an alias or a task, or one of ``also``.

        ``also``: the names a configuration file being read is about to
        register. The built-in model is always a valid default (it is
        registered once the manager is made). ``None`` (no default) is valid.
        """
        if name is None:
            return
        state = self._state
        with state.lock:
            registry = state.registry
            if name == BUILTIN_ID or name in also or name in registry.tasks or registry.resolve_quiet(name):
                return
            known = [*registry.names(), *registry.tasks, *also]
        known = list(dict.fromkeys([*known, BUILTIN_ID]))
        close = [k for k in known if k.lower() == name.lower()] or difflib.get_close_matches(name, known, n=3,
                                                                                              cutoff=0.5)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigurationError(f"default_model {name!r} names no model, alias or task: {hint}"
                                 f"use one of {', '.join(known)}, or register it first",
                                 path=str(path) if path else None, key="default_model")

    def adopt(self, config: ConfigFile) -> None:
        """A configuration file's models and aliases, for a new manager (nothing is loaded yet)."""
        specs = [self._checked(spec) for spec in config.models.values() if spec.base is None]  # backends now
        state = self._state
        with state.lock:
            for spec in specs:
                state.registry.put(spec)
        adapters = [self._checked(self._adapters.derive(spec)) for spec in config.models.values() if spec.base]
        with state.lock:
            for spec in adapters:
                state.registry.put(spec)
            for name, target in config.aliases.items():  # all at once: an alias may name a later alias
                state.registry.point(name, target)
            state.registry.tasks.update(config.tasks)
            state.registry.inference.update(config.inference)
            for name in config.aliases:
                state.registry.resolve(name)  # an alias to an unknown id, or a cycle, is a configuration error

    def _check_idle(self, stale: Instance | None) -> None:
        if stale is not None and stale.leases:
            raise ModelInUseError(self._state.name_of(stale), stale.leases)

    def _take_out(self, stale: Instance | None) -> Victims:
        """The stale instance out of the state (a loading one is freed when its load ends). Lock held."""
        if stale is None or stale.state != "loaded":
            return []
        return self._evictions.take_out([policy.Eviction(stale.key, stale.spec.id, "manual", stale.total_bytes)])


# -- saving: every setting, model (with its pin) and alias, merged into the file -------------

class Persistence:
    """Knows the configuration file of one manager and writes the state into it."""

    def __init__(self, state: ManagerState, path: Path | None) -> None:
        self._state = state
        self.path = path  # the file read, and where save() writes by default

    def save(self, path: str | os.PathLike[str] | None = None, *, models: Sequence[str] | None = None,
             aliases: Sequence[str] | None = None, settings: bool = True) -> Path:
        """Write ``models`` and ``aliases`` (``None``: all), what was removed, and the settings when asked."""
        target = Path(path) if path is not None else (self.path or default_config_path())
        state = self._state
        with state.lock:
            registry = state.registry
            chosen = [i for i in (registry.specs if models is None else models)
                      if not registry.specs[i].builtin and not registry.specs[i].task]
            specs = {i: registry.specs[i].with_changes(pinned=i in registry.pinned) for i in chosen}
            names = {a: registry.aliases[a] for a in (registry.aliases if aliases is None else aliases)
                     if a not in registry.tasks}
            tasks = {name: task.to_mapping(selected=registry.aliases.get(name, "").partition("/")[2] or None)
                     for name, task in registry.tasks.items()} if settings else None
            inference = dict(registry.inference) if settings and registry.inference else None
            removed = set(registry.removed)
            defaults = state.settings.to_mapping() if settings else None
            default = defaults and defaults["default_model"]
            if defaults and default in registry.specs and registry.specs[default].builtin:
                defaults["default_model"] = None  # the built-in default comes back by itself
        written = save_config(target, specs, names, removed=removed, defaults=defaults, tasks=tasks,
                              inference=inference)
        state = self._state
        with state.lock:
            state.registry.removed -= removed
        self.path = self.path or written
        return written
