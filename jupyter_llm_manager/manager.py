"""The kernel-resident model manager: registry, aliases, loading, eviction, freeing.

Invariants (each checked by tests):

- The manager holds the only strong reference to a loaded model; handles,
  reports and events hold ids.
- Ids whose specs have the same :attr:`~ModelSpec.instance_key` share one
  instance; an alias always resolves to exactly one registered id.
- A leased or pinned instance is never evicted; every eviction and unload goes
  through :meth:`LLMManager._release`, which emits the event.
- Local instances never exceed ``max_loaded_models``; bytes accounted on a
  device stay within its budget, unless a load's real footprint turns out
  larger than its estimate and nothing else may be evicted (then a warning).
- A loaded instance is accounted at its measured footprint plus the runtime
  reserve of its estimate (KV cache and overhead): the memory it uses once
  it generates, not only its weights.

Locks, always taken in this order: device load locks (sorted by device name)
→ the registry lock ``_lock`` → the event bus lock. ``_lock`` is held only for
bookkeeping, never while loading, generating, freeing or emitting events, so
using a loaded model never waits behind another model's load. Loads onto one
device are serialized by that device's lock, so two loads cannot overcommit it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import threading
import time
import weakref
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Iterable, Mapping

from .backends import Backend, LoadedModel, Placement, get_backend, release_frames
from .config import (RegistryFile, check_max_loaded_models, check_memory_budget,
                     check_memory_fraction, default_config_path, find_config_path, load_config, save_registry)
from .errors import (ConfigurationError, DeviceShortfall, LLMManagerError, MemoryHolder,
                     ModelInUseError, ModelLoadingError, OutOfMemoryDuringLoad,
                     ResourceNotAvailableError)
from .estimate import MemoryEstimate
from .events import Event, EventBus, EvictionReason
from .generation import GenerationParams, GenerationResult, Prompt, normalize_prompt
from .handles import Lease, ModelHandle, TextStream
from .holders import HOLDER_HINT, describe_holders
from .memory import DeviceMemory, DeviceProbe, DeviceReport, device_budget, probe_devices
from .reports import GarbageReport, StatusRow, UnloadReport
from .registry import Registry
from .spec import ModelSpec, check_model_id, expand_path
from .units import NEVER, format_bytes, parse_duration

__all__ = ["LLMManager", "get_manager"]

log = logging.getLogger(__name__)

_FIT_HINT = ("Unpin or unload a model, raise memory_fraction or memory_budget, choose a smaller dtype or "
             "quantization='4bit', or place the model on another device (device='cpu').")
_REAPER_MAX_SLEEP_S = 60.0


class _Unset:
    def __repr__(self) -> str:
        return "<from config, else default>"


_UNSET: Any = _Unset()


@dataclass(eq=False)
class _Instance:
    """One loaded (or loading) copy of weights, shared by every id with its key."""

    key: str
    spec: ModelSpec
    backend: Backend
    state: str = "loading"  # "loading" | "loaded" | "unloading"
    placement: Placement | None = None
    loaded: LoadedModel | None = None
    bytes: dict[str, int] = field(default_factory=dict)  # accounted: the estimate, then footprint + reserve
    footprint: dict[str, int] = field(default_factory=dict)  # measured after the load
    leases: int = 0
    lease_threads: Counter = field(default_factory=Counter)
    last_used: float = 0.0
    load_seconds: float | None = None
    ready: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None

    @property
    def remote(self) -> bool:
        return self.backend.remote

    @property
    def total_bytes(self) -> int:
        return sum(self.bytes.values())

    @property
    def footprint_bytes(self) -> int:
        return sum(self.footprint.values())


class LLMManager:
    """Loads models lazily, shares instances between aliases, evicts and frees for real.

    ``max_loaded_models`` caps the local instances; ``memory_fraction`` (or
    ``memory_budget``, a size or a size per device) bounds the bytes held per
    device; ``keep_alive`` (``"30m"``) unloads models idle that long. Values not
    given come from the configuration file's ``defaults``. ``config_path=False``
    reads no file. ``clock``, ``device_probe`` and ``backend_factory`` are for
    tests and embedding.
    """

    def __init__(
        self,
        max_loaded_models: int | None = _UNSET,
        memory_fraction: float = _UNSET,
        keep_alive: str | float | None = _UNSET,
        config_path: str | os.PathLike | None | bool = None,
        *,
        memory_budget: str | int | Mapping[str, str | int] | None = _UNSET,
        clock: Callable[[], float] = time.time,
        device_probe: DeviceProbe = probe_devices,
        backend_factory: Callable[[str], Backend] = get_backend,
        preload: bool = True,
    ) -> None:
        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)
        self._clock = clock
        self._probe = device_probe
        self._backend_factory = backend_factory
        self._bus = EventBus(clock=clock)
        self._registry = Registry()
        self._instances: dict[str, _Instance] = {}
        self._failures: dict[str, str] = {}
        self._last_used: dict[str, float] = {}
        self._estimates: dict[tuple[str, int | None], MemoryEstimate] = {}
        self._backends: dict[str, Backend] = {}
        self._device_locks: dict[str, threading.Lock] = {}
        self._lingering: list[tuple[str, weakref.ref]] = []
        self._closed = False
        self._limits_pending = False  # a cap or budget could not be restored yet (leases, pins)
        self._reaper: threading.Thread | None = None
        self.default_model: str | None = None
        self._config_path = None if config_path is False else find_config_path(config_path or None)
        registry = load_config(self._config_path) if self._config_path else RegistryFile(path=None)
        self._apply_settings(registry, max_loaded_models, memory_fraction, keep_alive, memory_budget)
        self._adopt(registry)
        if preload:
            self._start_preload()

    # -- settings ------------------------------------------------------------------

    def _apply_settings(self, registry: RegistryFile, max_loaded_models: Any, memory_fraction: Any,
                        keep_alive: Any, memory_budget: Any) -> None:
        defaults = registry.defaults

        def chosen(given: Any, name: str) -> Any:
            return getattr(defaults, name) if given is _UNSET else given

        self._max_loaded = _checked(check_max_loaded_models, chosen(max_loaded_models, "max_loaded_models"))
        self._fraction = _checked(check_memory_fraction, chosen(memory_fraction, "memory_fraction"))
        self._budget = _checked(check_memory_budget, chosen(memory_budget, "memory_budget"))
        self._keep_alive = _checked(parse_duration, chosen(keep_alive, "keep_alive"))
        self.default_model = defaults.default_model

    def _adopt(self, registry: RegistryFile) -> None:
        for spec in registry.models.values():
            self._registry.put(spec)
        self._registry.aliases.update(registry.aliases)  # all at once: a file may name an alias before its target
        for name in registry.aliases:
            self._registry.resolve(name)  # an alias to an unknown id, or a cycle, is a configuration error

    @property
    def config_path(self) -> Path | None:
        """The file this manager read, and where ``save()`` writes by default."""
        return self._config_path

    @property
    def max_loaded_models(self) -> int | None:
        """The cap on loaded local instances; ``None`` for no cap. Lowering it evicts at once."""
        return self._max_loaded

    @max_loaded_models.setter
    def max_loaded_models(self, value: int | None) -> None:
        self._max_loaded = _checked(check_max_loaded_models, value)
        self._settings_changed("max_loaded_models", value)

    @property
    def memory_fraction(self) -> float:
        """The share of each device's total memory this manager may hold."""
        return self._fraction

    @memory_fraction.setter
    def memory_fraction(self, value: float) -> None:
        self._fraction = _checked(check_memory_fraction, value)
        self._settings_changed("memory_fraction", value)

    @property
    def memory_budget(self) -> int | dict[str, int] | None:
        """An absolute budget (bytes, or bytes per device) used instead of the fraction."""
        return self._budget

    @memory_budget.setter
    def memory_budget(self, value: str | int | Mapping[str, str | int] | None) -> None:
        self._budget = _checked(check_memory_budget, value)
        self._settings_changed("memory_budget", value)

    @property
    def keep_alive(self) -> float | None:
        """Seconds a model may stay idle before it is unloaded; ``None`` for never."""
        return self._keep_alive

    @keep_alive.setter
    def keep_alive(self, value: str | float | None) -> None:
        self._keep_alive = _checked(parse_duration, value)
        self._settings_changed("keep_alive", value)

    def _settings_changed(self, name: str, value: Any) -> None:
        """Tell subscribers, wake the reaper, and evict whatever the new limits no longer allow."""
        with self._changed:
            self._changed.notify_all()
        self._bus.emit("settings_changed", message=f"{name} = {value}")
        self._ensure_reaper()
        self._enforce_limits()

    # -- registry --------------------------------------------------------------------

    def register(self, model_id: str, source: str | None = None, *, backend: str = "transformers",
                 overwrite: bool = False, persist: bool = False, **options: Any) -> ModelSpec:
        """Register a model under ``model_id``; loads nothing.

        Registering the same spec again is a no-op; a different spec needs
        ``overwrite=True`` (a loaded instance no other id shares is unloaded).
        ``persist=True`` also saves it to the configuration file.
        """
        data = {"source": source, "backend": backend, **options}
        spec = ModelSpec.from_mapping(model_id, {k: v for k, v in data.items() if v is not None})
        spec = self._register_spec(spec, overwrite=overwrite)
        if persist:
            self._persist({model_id: spec}, {})
        return spec

    def _register_spec(self, spec: ModelSpec, *, overwrite: bool) -> ModelSpec:
        self._backend(spec.backend).validate(spec)
        model_id = spec.id
        with self._lock:
            registry = self._registry
            old = registry.specs.get(model_id)
            if old == spec and model_id not in registry.aliases:
                return old
            if not overwrite and (old is not None or model_id in registry.aliases):
                what = "an alias" if model_id in registry.aliases else "a model with another spec"
                raise ConfigurationError(f"{model_id!r} is already {what}; pass overwrite=True to replace it",
                                         model_id=model_id)
            stale = self._instances.get(registry.key_left_behind(model_id, spec) or "")
            if stale is not None and stale.leases:
                raise ModelInUseError(model_id, stale.leases)
            registry.put(spec)
            self._failures.pop(model_id, None)
        if stale is not None:
            self._unload_instance(stale, "manual", wait=0.0, quiet=True)
        self._bus.emit("registered", model_id, message=spec.source or spec.base_url or "")
        return spec

    def read_config(self, path: str | os.PathLike) -> RegistryFile:
        """Register the models and aliases of a configuration file and apply its defaults.

        Ids already registered are replaced by the file's specs, and the
        built-in demo models make way when the file registers models;
        ``save()`` writes to this file from now on.
        """
        registry = load_config(Path(expand_path(os.fspath(path))))
        if registry.models:  # the built-in demo models stand in for a configuration; a real one replaces them
            with self._lock:
                placeholders = [i for i, spec in self._registry.specs.items()
                                if spec.builtin and i not in registry.models]
            for model_id in placeholders:
                self.unregister(model_id)
        for spec in registry.models.values():
            self._register_spec(spec, overwrite=True)
        for name, target in registry.aliases.items():
            self.alias(name, target, overwrite=True)
        for name in registry.defaults_given:
            if name == "default_model":
                self.default_model = registry.defaults.default_model
            else:
                setattr(self, name, getattr(registry.defaults, name))
        with self._lock:
            self._config_path = registry.path
        return registry

    def unregister(self, model_id: str, *, persist: bool = False) -> None:
        """Forget a model (or an alias), unloading its instance if no other id shares it."""
        with self._lock:
            registry = self._registry
            if model_id not in registry.aliases:
                canonical = registry.resolve(model_id)
                key = registry.keys[canonical]
                stale = None if registry.shared(key, besides=canonical) else self._instances.get(key)
                if stale is not None and stale.leases:
                    raise ModelInUseError(canonical, stale.leases)
                self._failures.pop(canonical, None)
            else:
                stale = None
            registry.remove(model_id)
        if stale is not None:
            self._unload_instance(stale, "manual", wait=0.0, quiet=True)
        self._bus.emit("unregistered", model_id)
        if persist:
            self._persist({}, {})

    def alias(self, name: str, target: str, *, overwrite: bool = False, persist: bool = False) -> None:
        """Make ``name`` another name of ``target`` (the same loaded instance)."""
        check_model_id(name)
        with self._lock:
            self._registry.set_alias(name, target, overwrite=overwrite)
        self._bus.emit("registered", name, message=f"alias of {target}")
        if persist:
            self._persist({}, {name: target})

    def spec(self, model_id: str) -> ModelSpec:
        """The spec an id or alias resolves to."""
        with self._lock:
            return self._registry.specs[self._registry.resolve(model_id)]

    def resolve(self, model_id: str) -> str:
        """The registered id behind an id or alias (raises :class:`ModelNotFoundError`)."""
        with self._lock:
            return self._registry.resolve(model_id)

    def ids(self) -> list[str]:
        """Registered ids and aliases, for completion and listings."""
        with self._lock:
            return self._registry.names()

    def _backend(self, name: str) -> Backend:
        backend = self._backends.get(name)
        if backend is None:
            backend = self._backends[name] = self._backend_factory(name)
        return backend

    # -- pins ------------------------------------------------------------------------

    def pin(self, model_id: str) -> None:
        """Never evict this model (LRU, budget or keep-alive); it can still be unloaded by hand."""
        with self._lock:
            canonical = self._registry.resolve(model_id)
            self._registry.pinned.add(canonical)
        self._bus.emit("pinned", canonical)

    def unpin(self, model_id: str) -> None:
        with self._lock:
            canonical = self._registry.resolve(model_id)
            self._registry.pinned.discard(canonical)
            self._changed.notify_all()
            retry = self._limits_pending
        self._bus.emit("unpinned", canonical)
        if retry:
            self._enforce_limits()

    # -- loading -----------------------------------------------------------------------

    def load(self, model_id: str, *, force_reload: bool = False, pin: bool = False) -> ModelHandle:
        """Load now (otherwise loading is lazy) and return a handle; ``pin`` pins it too."""
        if pin:
            self.pin(model_id)
        if force_reload:
            self.unload(model_id)
        _, instance = self._acquire(model_id)
        self._release_lease(instance)
        return ModelHandle(self, model_id)

    def use(self, model_id: str) -> Lease:
        """``with manager.use(id) as lm:`` — ``lm.model`` and ``lm.tokenizer``, never evicted meanwhile."""
        return Lease(self, model_id)

    def _acquire(self, model_id: str) -> tuple[str, _Instance]:
        """Lease the instance of ``model_id`` to this thread, loading it first if needed (single-flight).

        The lease is returned with ``_release_lease(instance, owner)`` where
        ``owner`` is the acquiring thread's ident, from whichever thread.
        """
        while True:
            with self._lock:
                canonical = self._registry.resolve(model_id)
                key = self._registry.keys[canonical]
                instance = self._instances.get(key)
                if instance is not None and instance.state == "loaded":
                    self._lease(instance)
                    return canonical, instance
                owner = instance is None
                if owner:
                    spec = self._registry.specs[canonical]
                    instance = _Instance(key, spec, self._backend(spec.backend))
                    self._instances[key] = instance
            if owner:
                self._load_instance(canonical, instance)
                return canonical, instance
            instance.ready.wait()
            error = instance.error
            if error is not None and not isinstance(error, (ResourceNotAvailableError, KeyboardInterrupt)):
                raise ModelLoadingError(f"loading {canonical!r} failed in another thread: {error}",
                                        model_id=canonical) from error
            # loaded: lease it; refused for room or interrupted: that was the other caller's answer, try ours

    def _lease(self, instance: _Instance) -> None:
        instance.leases += 1
        instance.lease_threads[threading.get_ident()] += 1
        instance.last_used = self._clock()

    def _release_lease(self, instance: _Instance, owner: int | None = None) -> None:
        with self._lock:
            instance.leases -= 1
            instance.lease_threads[owner if owner is not None else threading.get_ident()] -= 1
            instance.last_used = self._last_used[instance.key] = self._clock()
            self._changed.notify_all()
            retry = self._limits_pending and not instance.leases
        if retry:
            self._enforce_limits()

    def _load_instance(self, canonical: str, instance: _Instance) -> None:
        """Make room, load, and publish ``instance`` leased to the caller; on failure leave no trace."""
        self._bus.emit("loading", canonical)
        started = time.perf_counter()
        try:
            estimate = self._estimate_of(instance.spec, instance.backend)
            placement = self._place(instance)
            with self._device_locks_for(placement.devices):
                needed = self._needed_bytes(placement, estimate)
                self._free(self._make_room(instance, placement, needed, canonical, self._devices_now()))
                loaded = self._load_with_retry(canonical, instance, placement, needed)
                with self._lock:
                    instance.loaded, instance.state = loaded, "loaded"
                    instance.footprint = dict(loaded.footprint) if not instance.remote else {}
                    instance.bytes = _accounted(instance.footprint, placement, estimate)
                    instance.load_seconds = time.perf_counter() - started
                    self._lease(instance)
                    self._failures.pop(canonical, None)
                    instance.ready.set()
                    self._changed.notify_all()
        except BaseException as error:
            self._abandon(canonical, instance, error)
            raise
        self._bus.emit("loaded", canonical, seconds=instance.load_seconds, bytes=instance.footprint_bytes,
                       message=", ".join(placement.devices))
        self._ensure_reaper()
        if instance.total_bytes > sum(needed.values()):  # heavier than estimated: restore the budgets
            self._enforce_limits(protect=instance)

    def _abandon(self, canonical: str, instance: _Instance, error: BaseException) -> None:
        """Undo a failed load: no registry entry, memory released, waiters told.

        The error's frames lose their locals: an interrupted or failed load's
        half-built tensors must not live on in the traceback a notebook keeps.
        """
        release_frames(error)
        with self._lock:
            if self._instances.get(instance.key) is instance:
                del self._instances[instance.key]
            instance.state, instance.error = "failed", error
            message = str(error) if not isinstance(error, KeyboardInterrupt) else "interrupted"
            if not isinstance(error, (ResourceNotAvailableError, KeyboardInterrupt)):  # the model itself failed
                self._failures[canonical] = message
            instance.ready.set()
            self._changed.notify_all()
        loaded, instance.loaded = instance.loaded, None
        if loaded is not None:
            instance.backend.unload(loaded)
        del loaded
        gc.collect()
        if instance.placement is not None:
            instance.backend.release_memory(instance.placement.devices)
        self._bus.emit("load_failed", canonical, message=message)

    def _load_with_retry(self, canonical: str, instance: _Instance, placement: Placement,
                         needed: dict[str, int]) -> LoadedModel:
        """Load; on out-of-memory, evict what may be evicted there and try once more."""
        try:
            return instance.backend.load(instance.spec, placement)
        except OutOfMemoryDuringLoad as error:
            first_error = str(error)
        gc.collect()
        instance.backend.release_memory(placement.devices)
        with self._lock:
            victims = [(i, "budget") for i in self._evictable() if set(i.bytes) & set(placement.devices)
                       and i is not instance]
            for victim, _ in victims:
                self._take_out(victim)
        if not victims:
            raise self._out_of_memory_error(canonical, placement, needed, first_error)
        self._free(victims)
        try:
            return instance.backend.load(instance.spec, placement)
        except OutOfMemoryDuringLoad as error:
            raise self._out_of_memory_error(canonical, placement, needed, str(error)) from None

    def _out_of_memory_error(self, canonical: str, placement: Placement, needed: dict[str, int],
                             detail: str) -> ResourceNotAvailableError:
        with self._lock:
            shortfalls = [self._shortfall(device, needed.get(device, 0), None) for device in placement.devices]
        return ResourceNotAvailableError(
            f"Cannot load {canonical!r}: the device ran out of memory during the load ({detail}), also after "
            "evicting every model that may be evicted.", model_id=canonical, shortfalls=shortfalls,
            hint="Another process may be using the GPU (check nvidia-smi). " + _FIT_HINT)

    # -- placement and room ---------------------------------------------------------

    def _devices_now(self) -> dict[str, DeviceMemory]:
        return {memory.device: memory for memory in self._probe()}

    def _place(self, instance: _Instance) -> Placement:
        """Choose the device(s) for an instance from its spec and the room on each device."""
        if instance.remote:
            return Placement(())
        wanted = instance.spec.device
        kinds = instance.backend.device_kinds()
        if wanted == "cpu" or (wanted == "auto" and kinds == {"cpu"}):
            return Placement(("cpu",))
        devices = self._devices_now()
        gpus = [d for d in devices if d.startswith("cuda")] if "cuda" in kinds else []
        if isinstance(wanted, tuple) or wanted == "balanced":
            chosen = list(wanted) if isinstance(wanted, tuple) else gpus
            self._require_gpus(instance.spec.id, chosen, gpus)
            with self._lock:
                room = {d: self._room(devices[d], instance) for d in chosen}
            return Placement(tuple(chosen), max_memory=room)
        if wanted == "mps" or (wanted == "auto" and not gpus and "mps" in kinds):
            if "mps" not in kinds:
                raise ResourceNotAvailableError(f"{instance.spec.id!r} asks for device 'mps', which this "
                                                "machine's torch does not support; use device='cpu'")
            return Placement(("cpu",), target="mps")
        if wanted.startswith("cuda:"):
            self._require_gpus(instance.spec.id, [wanted], gpus)
            return Placement((wanted,))
        if wanted == "cuda":
            self._require_gpus(instance.spec.id, ["cuda"], gpus)
        if not gpus:
            return Placement(("cpu",))
        with self._lock:
            best = max(gpus, key=lambda d: self._room(devices[d], instance))
        return Placement((best,))

    def _require_gpus(self, model_id: str, wanted: list[str], gpus: list[str]) -> None:
        if not gpus:
            raise ResourceNotAvailableError(
                f"{model_id!r} asks for a CUDA GPU but none is usable here (no GPU, no driver, or a CPU-only "
                "torch build: see `jupyter-llm-manager doctor`); use device='cpu' or 'auto'", model_id=model_id)
        missing = [d for d in wanted if d != "cuda" and d not in gpus]
        if missing:
            raise ResourceNotAvailableError(f"{model_id!r} asks for {', '.join(missing)}, which is not visible; "
                                            f"visible GPUs: {', '.join(gpus)}", model_id=model_id)

    def _held(self, device: str, exclude: _Instance | None = None) -> int:
        return sum(i.bytes.get(device, 0) for i in self._instances.values() if i is not exclude)

    def _budget_of(self, memory: DeviceMemory, exclude: _Instance | None = None) -> tuple[int, int]:
        """(budget, held) on a device. Caller holds ``_lock``."""
        held = self._held(memory.device, exclude)
        budget = device_budget(memory, fraction=self._fraction, absolute=self._budget, held_bytes=held)
        return budget, held

    def _room(self, memory: DeviceMemory, instance: _Instance) -> int:
        """Bytes that could be made free for ``instance`` on a device, evictions included."""
        budget, held = self._budget_of(memory, instance)
        evictable = sum(i.bytes.get(memory.device, 0) for i in self._evictable() if i is not instance)
        return budget - held + evictable

    def _needed_bytes(self, placement: Placement, estimate: MemoryEstimate) -> dict[str, int]:
        if not placement.devices:
            return {}
        share = estimate.total_bytes // len(placement.devices)
        return {device: share for device in placement.devices}

    def _evictable(self) -> list[_Instance]:
        """Loaded, idle, unpinned local instances, lowest priority then least recently used first."""
        candidates = [i for i in self._instances.values()
                      if i.state == "loaded" and not i.leases and not i.remote and not self._registry.is_pinned(i.key)]
        return sorted(candidates, key=lambda i: (self._registry.priority(i.key), i.last_used))

    def _name_of(self, instance: _Instance) -> str:
        """The first registered id of an instance (its spec's id once none is left)."""
        names = self._registry.ids_of(instance.key)
        return names[0] if names else instance.spec.id

    def _make_room(self, instance: _Instance, placement: Placement, needed: dict[str, int], canonical: str,
                   devices: dict[str, DeviceMemory]) -> list[tuple[_Instance, EvictionReason]]:
        """Choose victims so the cap and every budget fit, take them out, and account ``instance``.

        Raises :class:`ResourceNotAvailableError` and changes nothing when even
        evicting everything evictable would not be enough. ``devices`` is read
        under the device locks, so no other load on them is in flight.
        """
        with self._lock:
            candidates = self._evictable()
            victims: dict[_Instance, EvictionReason] = {}
            self._choose_for_cap(instance, candidates, victims, canonical)
            shortfalls = []
            for device, need in needed.items():
                budget, held = self._budget_of(devices[device], instance)
                available = budget - held + sum(v.bytes.get(device, 0) for v in victims)
                for candidate in candidates:
                    if available >= need:
                        break
                    if candidate not in victims and candidate.bytes.get(device):
                        victims[candidate] = "budget"
                        available += candidate.bytes[device]
                if available < need:
                    shortfalls.append(self._shortfall(device, need, devices[device], instance))
            if shortfalls:
                raise ResourceNotAvailableError(
                    f"Cannot load {canonical!r}: not enough memory, even after evicting every model that may "
                    "be evicted:", model_id=canonical, shortfalls=shortfalls, hint=_FIT_HINT)
            for victim in victims:
                self._take_out(victim)
            instance.placement, instance.bytes = placement, dict(needed)
        return list(victims.items())

    def _choose_for_cap(self, instance: _Instance, candidates: list[_Instance],
                        victims: dict[_Instance, EvictionReason], canonical: str) -> None:
        if instance.remote or self._max_loaded is None:
            return
        local = [i for i in self._instances.values() if i is not instance and not i.remote]
        excess = len(local) + 1 - self._max_loaded
        for candidate in candidates[:max(excess, 0)]:
            victims[candidate] = "lru"
        if excess > len(candidates):
            blockers = ", ".join(str(h) for h in self._blockers(None, instance))
            raise ResourceNotAvailableError(
                f"Cannot load {canonical!r}: max_loaded_models={self._max_loaded} is reached and no loaded model "
                f"may be evicted ({blockers}).", model_id=canonical,
                hint="Unpin or unload a model, or raise max_loaded_models.")

    def _shortfall(self, device: str, need: int, memory: DeviceMemory | None,
                   instance: _Instance | None = None) -> DeviceShortfall:
        memory = memory or self._devices_now().get(device) or DeviceMemory(device, device, 0, 0, "unknown")
        budget, held = self._budget_of(memory, instance)
        available = budget - held + sum(i.bytes.get(device, 0) for i in self._evictable())
        return DeviceShortfall(device, need, max(available, 0), budget, memory.total_bytes,
                               tuple(self._blockers(device, instance)))

    def _blockers(self, device: str | None, instance: _Instance | None) -> list[MemoryHolder]:
        holders = []
        for other in self._instances.values():
            if other is instance or other.remote or (device and not other.bytes.get(device)):
                continue
            why = ("loading" if other.state == "loading" else "in use" if other.leases
                   else "pinned" if self._registry.is_pinned(other.key) else None)
            if why:
                size = other.bytes.get(device, 0) if device else other.total_bytes
                holders.append(MemoryHolder(self._name_of(other), size, why))
        return holders

    def _enforce_limits(self, protect: _Instance | None = None) -> None:
        """Evict idle instances until the count cap and every device budget hold again.

        Needed after a lowered cap or budget, and after a load whose real
        footprint exceeded its estimate. What cannot be evicted now (leased,
        pinned) is retried when a lease ends or a pin is lifted.
        """
        devices = self._devices_now()
        victims: list[tuple[_Instance, EvictionReason]] = []
        with self._lock:
            candidates = [i for i in self._evictable() if i is not protect]
            local = sum(1 for i in self._instances.values() if not i.remote)
            excess = local - self._max_loaded if self._max_loaded is not None else 0
            victims.extend((c, "lru") for c in candidates[:max(excess, 0)])
            pending = excess > len(candidates)
            for memory in devices.values():
                budget, held = self._budget_of(memory)
                over = held - budget - sum(v.bytes.get(memory.device, 0) for v, _ in victims)
                for candidate in candidates:
                    if over <= 0:
                        break
                    if candidate.bytes.get(memory.device) and all(candidate is not v for v, _ in victims):
                        victims.append((candidate, "budget"))
                        over -= candidate.bytes[memory.device]
                if over > 0:
                    pending = True
                    log.warning("models hold %s more than the budget on %s and none may be evicted now",
                                format_bytes(over), memory.device)
            for victim, _ in victims:
                self._take_out(victim)
            self._limits_pending = pending
        self._free(victims)

    def _device_locks_for(self, devices: Iterable[str]) -> ExitStack:
        stack = ExitStack()
        for device in sorted(set(devices)):
            with self._lock:
                lock = self._device_locks.setdefault(device, threading.Lock())
            stack.enter_context(lock)
        return stack

    # -- unloading and freeing ---------------------------------------------------------

    def unload(self, model_id: str, *, wait: float = 0.0) -> UnloadReport | None:
        """Unload the instance of ``model_id`` (shared by its aliases) and free its memory.

        Aliases stay registered. If a lease holds it, wait up to ``wait``
        seconds, then raise :class:`ModelInUseError`. Returns ``None`` when the
        model was not loaded.
        """
        with self._lock:
            instance = self._instances.get(self._registry.keys[self._registry.resolve(model_id)])
        if instance is None:
            return None
        return self._unload_instance(instance, "manual", wait=wait)

    def unload_all(self, *, wait: float = 0.0, skip_in_use: bool = False) -> list[UnloadReport]:
        """Unload every loaded model, pinned ones included.

        A model still in use after ``wait`` seconds raises :class:`ModelInUseError`,
        or is left loaded with ``skip_in_use=True`` (for buttons: free what can be freed).
        """
        with self._lock:
            instances = [i for i in self._instances.values() if i.state == "loaded"]
        reports = [self._unload_instance(i, "manual", wait=wait, quiet=skip_in_use) for i in instances]
        return [r for r in reports if r is not None]

    def _unload_instance(self, instance: _Instance, reason: EvictionReason, *, wait: float,
                         quiet: bool = False) -> UnloadReport | None:
        deadline = time.monotonic() + wait
        while True:
            if not self._wait_until_idle(instance, deadline, quiet):
                return None
            with self._device_locks_for(instance.placement.devices if instance.placement else ()):
                with self._lock:
                    if self._instances.get(instance.key) is not instance or instance.state != "loaded":
                        return None
                    if instance.leases:
                        continue  # leased again meanwhile: wait again
                    self._take_out(instance)
                return self._free([(instance, reason)])[0]

    def _wait_until_idle(self, instance: _Instance, deadline: float, quiet: bool) -> bool:
        with self._lock:
            while instance.leases or instance.state == "loading":
                mine = instance.lease_threads[threading.get_ident()] > 0
                remaining = deadline - time.monotonic()
                if mine or remaining <= 0:
                    if quiet:
                        return False
                    raise ModelInUseError(self._name_of(instance), instance.leases,
                                          loading=instance.state == "loading")
                self._changed.wait(remaining)
            return True

    def _take_out(self, instance: _Instance) -> None:
        """Remove an idle instance from the registry so nobody can lease it. Caller holds ``_lock``."""
        del self._instances[instance.key]
        instance.state = "unloading"

    def _free(self, victims: list[tuple[_Instance, EvictionReason]]) -> list[UnloadReport]:
        """Release taken-out instances one by one; the only path for evictions and unloads."""
        return [self._release(instance, reason) for instance, reason in victims]

    def _release(self, instance: _Instance, reason: EvictionReason) -> UnloadReport:
        """Drop every reference, collect, empty device caches, check the object is gone, tell."""
        started = time.perf_counter()
        devices = instance.placement.devices if instance.placement else ()
        model_id = self._name_of(instance)
        before = instance.backend.memory_in_use(devices)
        loaded, instance.loaded = instance.loaded, None
        target = _weak(loaded.model) if loaded is not None else None
        if loaded is not None:
            instance.backend.unload(loaded)
        del loaded
        gc.collect()
        instance.backend.release_memory(devices)
        after = instance.backend.memory_in_use(devices)
        alive = target() if target is not None else None
        holders = tuple(describe_holders(alive)) if alive is not None else ()
        del alive
        collected = target is None or target() is None
        if before:  # measured (CUDA): what the device allocator really got back
            freed = sum(max(before[d] - after.get(d, 0), 0) for d in before)
        else:  # not measurable (CPU): the footprint, once the object is gone
            freed = instance.footprint_bytes if collected else 0
        report = UnloadReport(model_id, instance.key, reason, freed, time.perf_counter() - started,
                              collected=collected, holders=holders)
        with self._lock:
            instance.state = "unloaded"
            if not report.collected:
                self._lingering.append((model_id, target))
            self._changed.notify_all()
        kind = "unloaded" if reason == "manual" else "evicted"
        self._bus.emit(kind, model_id, reason=reason, seconds=report.seconds, bytes=report.freed_bytes)
        if not report.collected:
            self._bus.emit("warning", model_id, message=f"{report} {HOLDER_HINT}")
        return report

    def collect_garbage(self) -> GarbageReport:
        """Collect garbage and empty device caches without unloading; report what is still alive."""
        started = time.perf_counter()
        before = {d.device: d.total_bytes - d.free_bytes for d in self._probe()}
        gc.collect()
        for backend in list(self._backends.values()):
            backend.release_memory(tuple(before))
        after = {d.device: d.total_bytes - d.free_bytes for d in self._probe()}
        lingering = self.lingering()
        return GarbageReport(before, after, lingering, time.perf_counter() - started)

    def lingering(self) -> dict[str, tuple[str, ...]]:
        """Unloaded models whose objects are still alive, and what holds each."""
        with self._lock:
            self._lingering = [(i, ref) for i, ref in self._lingering if ref() is not None]
            entries = list(self._lingering)
        found = {}
        for model_id, ref in entries:
            alive = ref()
            if alive is not None:
                found[model_id] = tuple(describe_holders(alive))
            del alive
        return found

    # -- keep-alive -------------------------------------------------------------------

    def _keep_alive_of(self, instance: _Instance) -> float | None:
        own = self._registry.keep_alive(instance.key)
        value = own if own is not None else self._keep_alive
        return None if value is None or value == NEVER else value

    def _expires_at(self, instance: _Instance) -> float | None:
        keep = self._keep_alive_of(instance)
        if keep is None or instance.leases or instance.state != "loaded" or self._registry.is_pinned(instance.key):
            return None
        return instance.last_used + keep

    def expire_idle(self) -> list[UnloadReport]:
        """Unload every instance idle longer than its keep-alive (what the reaper runs)."""
        now = self._clock()
        with self._lock:
            due = [i for i in self._evictable() if (self._expires_at(i) or NEVER) <= now]
        reports = [self._unload_instance(i, "keep_alive", wait=0.0, quiet=True) for i in due]
        return [r for r in reports if r is not None]

    def _ensure_reaper(self) -> None:
        with self._lock:
            if self._reaper is not None or self._closed:
                return
            if self._keep_alive is None and not any(s.keep_alive for s in self._registry.specs.values()):
                return
            self._reaper = threading.Thread(target=self._reap, name="llm-manager-keep-alive", daemon=True)
            self._reaper.start()

    def _reap(self) -> None:
        while True:
            with self._lock:
                if self._closed:
                    return
                due = [t for t in map(self._expires_at, self._instances.values()) if t is not None]
                delay = min(due) - self._clock() if due else _REAPER_MAX_SLEEP_S
                if delay > 0:
                    self._changed.wait(min(delay, _REAPER_MAX_SLEEP_S))
                if self._closed:
                    return
            try:
                self.expire_idle()
            except Exception:
                log.exception("the keep-alive reaper failed; it keeps running")

    def close(self) -> None:
        """Stop the reaper and unload every model. The manager is unusable after."""
        with self._lock:
            self._closed = True
            self._changed.notify_all()
            reaper = self._reaper
        if reaper is not None and reaper is not threading.current_thread():
            reaper.join(5)
        with self._lock:
            instances = [i for i in self._instances.values() if i.state == "loaded"]
        for instance in instances:
            if self._unload_instance(instance, "manual", wait=5.0, quiet=True) is None:
                log.warning("%r was still in use when the manager closed", self._name_of(instance))

    # -- generation -------------------------------------------------------------------

    def _params_for(self, model_id: str, params: Mapping[str, Any]) -> GenerationParams:
        return GenerationParams.build(self.spec(model_id).generation, params)

    def generate(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
                 **params: Any) -> GenerationResult:
        """Generate an answer (a string prompt goes through the chat template unless ``raw``)."""
        generation = self._params_for(model_id, params)
        prompt = normalize_prompt(prompt, system=system)
        canonical, instance = self._acquire(model_id)
        self._generation_started(canonical)
        result, error = None, None
        try:
            result = instance.backend.generate(instance.loaded, prompt, generation, model_id=model_id, raw=raw)
            return result
        except BaseException as failure:
            error = failure
            raise
        finally:
            self._release_lease(instance)
            self._generation_finished(canonical, result, error)

    def stream(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
               **params: Any) -> TextStream:
        """Text pieces as they are made; ``.result`` once done. Loads when iteration starts."""
        generation = self._params_for(model_id, params)
        return TextStream(self, model_id, normalize_prompt(prompt, system=system), generation, raw)

    def _generation_started(self, canonical: str) -> None:
        self._bus.emit("generation_started", canonical)

    def _generation_finished(self, canonical: str, result: GenerationResult | None,
                             error: BaseException | None = None) -> None:
        if result is not None:
            message = f"{result.completion_tokens} tokens, {result.tokens_per_second:.1f} tok/s"
            if result.finish_reason == "interrupted":
                message += ", interrupted"
            self._bus.emit("generation_finished", canonical, seconds=result.seconds, message=message)
            for warning in result.warnings:
                self._bus.emit("warning", canonical, message=warning)
        else:
            text = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
            self._bus.emit("generation_finished", canonical, message=text)

    # -- async ------------------------------------------------------------------------

    async def aload(self, model_id: str, **options: Any) -> ModelHandle:
        """``await manager.aload(id)`` — load in a worker thread."""
        return await asyncio.to_thread(self.load, model_id, **options)

    async def agenerate(self, model_id: str, prompt: Prompt, **options: Any) -> GenerationResult:
        """``await manager.agenerate(id, prompt)`` — generate in a worker thread."""
        return await asyncio.to_thread(self.generate, model_id, prompt, **options)

    async def astream(self, model_id: str, prompt: Prompt, **options: Any) -> AsyncIterator[str]:
        """``async for piece in manager.astream(id, prompt)``; cancelling stops the generation."""
        stream = self.stream(model_id, prompt, **options)
        loop = asyncio.get_running_loop()
        pieces: asyncio.Queue = asyncio.Queue()
        end = object()

        def pump() -> None:
            try:
                for piece in stream:
                    loop.call_soon_threadsafe(pieces.put_nowait, piece)
            except BaseException as error:  # handed to the awaiting side
                loop.call_soon_threadsafe(pieces.put_nowait, error)
            finally:
                loop.call_soon_threadsafe(pieces.put_nowait, end)

        worker = loop.run_in_executor(None, pump)
        try:
            while (item := await pieces.get()) is not end:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stream.stop()
            await asyncio.shield(worker)

    # -- reports -----------------------------------------------------------------------

    def estimate(self, model_id: str, *, refresh: bool = False) -> MemoryEstimate:
        """Memory the model would take, from metadata only (no weights are read)."""
        spec = self.spec(model_id)
        if refresh:
            self._estimates.pop((spec.instance_key, spec.required_memory), None)
        return self._estimate_of(spec, self._backend(spec.backend))

    def _estimate_of(self, spec: ModelSpec, backend: Backend) -> MemoryEstimate:
        cache_key = (spec.instance_key, spec.required_memory)
        cached = self._estimates.get(cache_key)
        if cached is None:
            cached = self._estimates[cache_key] = backend.estimate(spec)
        return cached

    def _cheap_estimate(self, spec: ModelSpec) -> MemoryEstimate | None:
        """A cached estimate, or a fresh one when it needs no network (local folders)."""
        cached = self._estimates.get((spec.instance_key, spec.required_memory))
        if cached is not None or not spec.local_path:
            return cached
        try:
            return self._estimate_of(spec, self._backend(spec.backend))
        except LLMManagerError as error:
            log.debug("no estimate for %r: %s", spec.id, error)
            return None

    def row(self, model_id: str) -> StatusRow:
        """The status row of one id (aliases resolve to their model's row)."""
        canonical = self.resolve(model_id)
        return next(row for row in self.status() if row.id == canonical)

    def status(self) -> list[StatusRow]:
        """One row per registered model id: state, device, memory, use, keep-alive."""
        with self._lock:
            specs = list(self._registry.specs.values())
        estimates = {spec.id: self._cheap_estimate(spec) for spec in specs}
        with self._lock:
            return [self._row(spec, estimates.get(spec.id)) for spec in specs if spec.id in self._registry.specs]

    def _row(self, spec: ModelSpec, estimate: MemoryEstimate | None) -> StatusRow:
        key = self._registry.keys[spec.id]
        instance = self._instances.get(key)
        backend = self._backends.get(spec.backend)
        remote = bool(backend and backend.remote) or instance is not None and instance.remote
        if instance is not None:
            state = "loaded" if instance.state == "loaded" else "loading"
        else:
            state = "failed" if spec.id in self._failures else "registered"
        placed = instance.placement.devices if instance is not None and instance.placement else ()
        device = "remote" if remote else ",".join(placed) or (
            ",".join(spec.device) if isinstance(spec.device, tuple) else spec.device)
        aliases = self._registry.aliases_of(spec.id)
        details = dict(instance.loaded.details) if instance is not None and instance.loaded else {}
        return StatusRow(
            id=spec.id, instance=key, aliases=aliases, backend=spec.backend, device=device, state=state,
            in_use=instance.leases if instance else 0, pinned=spec.id in self._registry.pinned, priority=spec.priority,
            estimated_bytes=estimate.total_bytes if estimate is not None and estimate.known else None,
            actual_bytes=instance.footprint_bytes if instance is not None and state == "loaded" else None,
            last_used=(instance.last_used if instance is not None else None) or self._last_used.get(key),
            expires_at=self._expires_at(instance) if instance is not None else None,
            error=self._failures.get(spec.id), remote=remote, trust_remote_code=spec.trust_remote_code,
            keep_alive=self._keep_alive_of(instance) if instance is not None else spec.keep_alive,
            load_seconds=instance.load_seconds if instance is not None else None, details=details)

    def devices(self) -> list[DeviceReport]:
        """Per device: total, free, this manager's budget, and the bytes its models hold."""
        memories = self._probe()
        with self._lock:
            reports = []
            for memory in memories:
                budget, held = self._budget_of(memory)
                models = tuple(self._name_of(i) for i in self._instances.values() if i.bytes.get(memory.device))
                reports.append(DeviceReport(memory.device, memory.name, memory.total_bytes, memory.free_bytes,
                                            budget, held, models, memory.source))
            return reports

    # -- events ------------------------------------------------------------------------

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` on every manager event; returns the unsubscribe function."""
        return self._bus.subscribe(callback)

    def events(self, limit: int | None = 50) -> list[Event]:
        """The most recent events, oldest first."""
        return self._bus.recent(limit)

    # -- persistence -------------------------------------------------------------------

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Persist registered models and aliases (atomic write, merged under a lock file)."""
        with self._lock:
            models = {i: s for i, s in self._registry.specs.items() if not s.builtin}
            aliases = dict(self._registry.aliases)
        return self._persist(models, aliases, path)

    def _persist(self, models: Mapping[str, ModelSpec], aliases: Mapping[str, str],
                 path: str | os.PathLike | None = None) -> Path:
        target = Path(path) if path is not None else (self._config_path or default_config_path())
        with self._lock:
            removed = set(self._registry.removed)
        defaults = {"max_loaded_models": self._max_loaded, "memory_fraction": self._fraction,
                    "keep_alive": None if self._keep_alive is None else (
                        "never" if self._keep_alive == NEVER else f"{self._keep_alive:g}s")}
        written = save_registry(target, models, aliases, removed=removed,
                                defaults={k: v for k, v in defaults.items() if v is not None})
        with self._lock:
            self._registry.removed -= removed
            if self._config_path is None:
                self._config_path = written
        return written

    # -- background preload --------------------------------------------------------------

    def _start_preload(self) -> None:
        with self._lock:
            wanted = [spec.id for spec in self._registry.specs.values() if spec.preload]
        if wanted:
            threading.Thread(target=self._preload, args=(wanted,), name="llm-manager-preload",
                             daemon=True).start()

    def _preload(self, model_ids: list[str]) -> None:
        for model_id in model_ids:
            try:
                self.load(model_id)
            except (LLMManagerError, OSError) as error:
                log.warning("preloading %r failed: %s", model_id, error)

    def __repr__(self) -> str:
        with self._lock:
            loaded = sum(1 for i in self._instances.values() if i.state == "loaded")
            return (f"<LLMManager {len(self._registry.specs)} registered, {loaded} loaded, "
                    f"cap={self._max_loaded}, keep_alive={self._keep_alive}>")


def _accounted(footprint: dict[str, int], placement: Placement, estimate: MemoryEstimate) -> dict[str, int]:
    """Bytes a loaded instance holds against budgets: its footprint plus the estimate's runtime reserve."""
    if not placement.devices:
        return {}
    reserve = max(estimate.total_bytes - estimate.weights_bytes, 0) // len(placement.devices)
    return {device: footprint.get(device, 0) + reserve for device in placement.devices}


def _checked(check: Callable[[Any], Any], value: Any) -> Any:
    """A setting validated by ``check``; its ``ValueError`` becomes a :class:`ConfigurationError`."""
    try:
        return check(value)
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


def _weak(obj: Any) -> weakref.ref | None:
    try:
        return weakref.ref(obj)
    except TypeError:
        return None


_singleton: LLMManager | None = None
_singleton_lock = threading.Lock()


def get_manager() -> LLMManager:
    """The kernel-resident manager, configured from the configuration file when one exists.

    When the configuration registers no model, it knows the two offline demo
    models (``demo-small``, ``demo-large``), so a first notebook works at once.
    """
    global _singleton
    with _singleton_lock:
        if _singleton is None:
            manager = LLMManager()
            if not manager.ids():
                from .demo import register_demo_models

                register_demo_models(manager)
                manager.default_model = manager.default_model or "demo-small"
            _singleton = manager
        return _singleton
