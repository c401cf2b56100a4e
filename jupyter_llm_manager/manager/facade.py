"""The manager's public API: :class:`LLMManager`, a facade over the parts of this package.

The facade checks arguments and calls one part per job (see the package
docstring: which part decides what, and the one lock rule); the parts are
made and connected in :mod:`.wiring`, the settings are properties
(:mod:`.settings_access`), the ``async`` forms live in :mod:`.async_calls`, and
:func:`~.kernel.get_manager` gives the kernel's own manager.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar

from ..backends import Backend, get_backend
from ..config.files import ConfigFile, find_config_path, load_config
from ..config.settings import SETTING_NAMES
from ..config.spec import ModelSpec, expand_path
from ..config.tasks import Task
from ..devices import DeviceProbe, probe_devices
from ..events import Event
from ..generation import GenerationParams, GenerationResult, Prompt, normalize_prompt
from ..reports import DeviceReport, GarbageReport, MachineReport, MemoryEstimate, PlanReport, StatusRow, UnloadReport
from ..support.deadlines import parse_wait
from .async_calls import AsyncCalls
from .generations import TextStream, checked_params, checked_texts, text_model
from .handles import Lease, ModelHandle
from .settings_access import SettingsAccess, checked
from .state import Ticket
from .wiring import shut_down, wire

__all__ = ["FROM_CONFIG", "LLMManager"]

T = TypeVar("T")


class _FromConfig(enum.Enum):
    FROM_CONFIG = "the configuration file's value, else the built-in default"


#: An argument left to the configuration file (``defaults:``), else to the built-in default.
FROM_CONFIG = _FromConfig.FROM_CONFIG
_Given = Literal[_FromConfig.FROM_CONFIG]


class LLMManager(SettingsAccess, AsyncCalls):
    """Loads models lazily, shares instances between aliases, evicts and frees for real.

    Settings not given come from the configuration file's ``defaults``
    (``config_path=False`` reads no file), else the built-in defaults.
    ``clock`` (monotonic), ``device_probe`` and ``backend_factory`` are for
    tests and embedding.
    """

    def __init__(self, max_loaded_models: int | None | _Given = FROM_CONFIG,
                 memory_fraction: float | _Given = FROM_CONFIG, keep_alive: str | float | None | _Given = FROM_CONFIG,
                 config_path: str | os.PathLike[str] | None | bool = None, *,
                 memory_budget: str | int | Mapping[str, str | int] | None | _Given = FROM_CONFIG,
                 wait_timeout: str | float | None | _Given = FROM_CONFIG, max_queue: int | _Given = FROM_CONFIG,
                 max_memory_per_model: str | int | None | _Given = FROM_CONFIG,
                 default_model: str | None | _Given = FROM_CONFIG, cooperate: bool | _Given = FROM_CONFIG,
                 ledger_path: str | os.PathLike[str] | None | _Given = FROM_CONFIG,
                 max_loaded_adapters: int | _Given = FROM_CONFIG,
                 clock: Callable[[], float] = time.monotonic, device_probe: DeviceProbe = probe_devices,
                 backend_factory: Callable[[str], Backend] = get_backend, preload: bool = True) -> None:
        path = None if config_path is False else find_config_path(None if config_path is True else config_path)
        config = load_config(path) if path else ConfigFile(path=None)
        given = {name: value for name, value in locals().items()  # the settings passed, by their parameter names
                 if name in SETTING_NAMES and value is not FROM_CONFIG}
        settings = checked(lambda: config.settings.with_values(given))
        self._parts = parts = wire(settings, path, clock=clock, probe=device_probe, backend_factory=backend_factory,
                                   load=lambda model_id: self.load(model_id))
        parts.registration.adopt(config)
        parts.registration.check_default_model(self.default_model, path=None if "default_model" in given else path)
        self.warmup = parts.warmup
        if preload:
            self.warmup.start(*parts.registration.preload_ids())

    # -- the registry -------------------------------------------------------------------------

    def register(self, model_id: str, source: str | None = None, *, backend: str | None = None,
                 overwrite: bool = False, persist: bool = False, **options: Any) -> ModelSpec:
        """Register a model under ``model_id``; loads nothing. ``persist=True`` also saves it.

        ``base="ID", adapter="FOLDER"`` registers a LoRA adapter (a PEFT folder or Hub id; a GGUF LoRA file
        for a llama_cpp base) that runs on the registered model ``ID``, checked against it now.
        """
        data = {"source": source, "backend": backend, **options}
        spec = ModelSpec.from_mapping(model_id, {k: v for k, v in data.items() if v is not None})
        spec = self._parts.registration.register(spec, overwrite=overwrite)
        if persist:
            self._parts.persistence.save(models=[spec.id], aliases=(), settings=False)
        return spec

    def unregister(self, model_id: str, *, persist: bool = False) -> None:
        """Forget a model (or an alias), unloading its instance if no other id shares it."""
        self._parts.registration.unregister(model_id)
        if persist:
            self._parts.persistence.save(models=(), aliases=(), settings=False)

    def alias(self, name: str, target: str, *, overwrite: bool = False, persist: bool = False) -> None:
        """Make ``name`` another name of ``target`` (the same loaded instance)."""
        self._parts.registration.alias(name, target, overwrite=overwrite)
        if persist:
            self._parts.persistence.save(models=(), aliases=[name], settings=False)

    def select(self, task: str, option: str) -> None:
        """Point ``task`` at another of its options; the previous one is unloaded once idle, if unused."""
        self._parts.limits.retire(self._parts.registration.select(task, option))

    def task(self, name: str) -> Task:
        """A task of the configuration: its options as written and its selected option when read."""
        return self._parts.registration.task(name)

    def tasks(self) -> list[str]:
        return self._parts.registration.tasks()

    def plan(self, model_ids: Sequence[str] | None = None) -> PlanReport:
        """Would these models fit together? A dry run of admission (default: the tasks' selected options)."""
        return self._parts.planner.plan(self._parts.planner.wanted() if model_ids is None else list(model_ids))

    def read_config(self, path: str | os.PathLike[str]) -> ConfigFile:
        """Register a configuration file's models and aliases and apply its settings; ``save()`` writes there."""
        config = load_config(Path(expand_path(os.fspath(path))))
        self._parts.registration.check_file_default(config)  # before anything of the file is taken
        self._parts.registration.read(config)
        self.configure(**{name: getattr(config.settings, name) for name in config.settings_given})
        self._parts.persistence.path = config.path
        return config

    def spec(self, model_id: str) -> ModelSpec:
        """The spec an id or alias resolves to."""
        return self._parts.registration.spec(model_id)

    def text_spec(self, model_id: str) -> ModelSpec:
        """The spec of a model that answers with text; else a
        :class:`~jupyter_llm_manager.errors.GenerationError` that says what it is (loads nothing)."""
        return text_model(self.spec(model_id))

    def resolve(self, model_id: str) -> str:
        """The registered id behind an id or alias (raises :class:`ModelNotFoundError`)."""
        return self._parts.registration.spec(model_id).id

    def ids(self) -> list[str]:
        """Registered ids, then aliases."""
        return self._parts.registration.ids()

    def pin(self, model_id: str) -> None:
        """Never evict this model (LRU, budget or keep-alive); it can still be unloaded by hand."""
        self._parts.registration.set_pinned(model_id, True)

    def unpin(self, model_id: str) -> None:
        self._parts.limits.after_unpin(self._parts.registration.set_pinned(model_id, False))

    # -- loading and using ------------------------------------------------------------------------

    def load(self, model_id: str, *, force_reload: bool = False, pin: bool = False,
             wait: float | str | None = None) -> ModelHandle:
        """Load now (otherwise loading is lazy); ``wait``: seconds to wait for room (default wait_timeout)."""
        if pin:
            self.pin(model_id)
        if force_reload:
            self.unload(model_id)
        self._lease(model_id, _wait_seconds(self, wait)).release()
        return ModelHandle(self, model_id)

    def use(self, model_id: str, *, wait: float | str | None = None) -> Lease:
        """``with manager.use(id) as lm:`` — ``lm.model`` and ``lm.tokenizer``, never evicted meanwhile."""
        seconds = _wait_seconds(self, wait)
        return Lease(model_id, lambda: self._lease(model_id, seconds, activate=True), lambda: self.spec(model_id))

    def generate(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
                 wait: float | str | None = None, **params: Any) -> GenerationResult:
        """Generate an answer (a string prompt goes through the chat template unless ``raw``)."""
        spec = text_model(self.spec(model_id))
        generation = self.generation_params(spec.id, **params)
        return self._parts.generations.generate(model_id, spec.id, normalize_prompt(prompt, system=system), generation,
                                          raw=raw, wait=_wait_seconds(self, wait))

    def stream(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
               wait: float | str | None = None, **params: Any) -> TextStream:
        """Text pieces as they are made; ``.result`` once done. Loads when iteration starts."""
        spec = text_model(self.spec(model_id))
        generation = self.generation_params(spec.id, **params)
        return self._parts.generations.stream(model_id, spec.id, normalize_prompt(prompt, system=system), generation,
                                        raw=raw, wait=_wait_seconds(self, wait))

    def generation_params(self, model_id: str, **params: Any) -> GenerationParams:
        """The checked parameters a generation would use (its spec's, then ``params``); loads nothing."""
        spec = self.spec(model_id)
        return checked_params(spec, self._parts.backends(spec.backend), params)

    def embed(self, model_id: str, texts: str | Sequence[str], *, wait: float | str | None = None) -> list[list[float]]:
        """One unit-length vector per text, from a model registered with ``mode: embed``."""
        spec = self.spec(model_id)
        texts = checked_texts(spec, texts)
        return self._parts.generations.embed(model_id, spec.id, texts, wait=_wait_seconds(self, wait)) if texts else []

    def _lease(self, model_id: str, seconds: float, *, activate: bool = False) -> Ticket:
        """A lease from admission (with its base's, for an adapter), waiting up to ``seconds`` on this manager's clock."""
        return self._parts.adapters.acquire(model_id, self._parts.state.deadline(seconds), activate=activate)

    # -- unloading --------------------------------------------------------------------------------

    def unload(self, model_id: str, *, wait: float | str = 0.0) -> UnloadReport | None:
        """Unload the instance of ``model_id`` (its aliases stay registered) and free its memory.

        A lease still held after ``wait`` seconds raises :class:`ModelInUseError`;
        returns ``None`` when the model was not loaded.
        """
        return self._parts.evictions.unload(self._parts.registration.key(model_id), self._parts.state.deadline(checked(lambda: parse_wait(wait))))

    def unload_all(self, *, wait: float | str = 0.0, skip_in_use: bool = False) -> list[UnloadReport]:
        """Unload every loaded model, pinned ones included; ``skip_in_use`` leaves busy ones loaded."""
        return self._parts.evictions.unload_all(self._parts.state.deadline(checked(lambda: parse_wait(wait))), quiet=skip_in_use)

    def expire_idle(self) -> list[UnloadReport]:
        """Unload every model idle longer than its keep-alive (what the reaper runs)."""
        return self._parts.evictions.expire()

    def collect_garbage(self) -> GarbageReport:
        """Collect garbage and empty device caches without unloading; report what is still alive."""
        return self._parts.freeing.collect_garbage()

    def lingering(self) -> dict[str, tuple[str, ...]]:
        """Unloaded models whose objects are still alive, and what holds each."""
        return self._parts.freeing.lingering()

    # -- reports and events -----------------------------------------------------------------------

    def estimate(self, model_id: str, *, refresh: bool = False) -> MemoryEstimate:
        """Memory the model would take, from metadata only (no weights are read)."""
        spec = self.spec(model_id)
        return self._parts.estimates.get(spec, self._parts.backends(spec.backend), refresh=refresh)

    def status(self) -> list[StatusRow]:
        """One row per registered model id: state, device, memory, use, keep-alive."""
        return self._parts.status.rows()

    def row(self, model_id: str) -> StatusRow:
        """The status row of one id (aliases resolve to their model's row)."""
        return self._parts.status.row(model_id)

    def machine(self) -> MachineReport:
        """Every manager of this user on this machine (kernels, scripts), the models each holds, and other GPU users."""
        return self._parts.cooperation.machine(self._parts.status.machine_models(self._parts.cooperation.pid,
                                                                     self._parts.cooperation.notebook))

    def ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another manager of this machine (``machine()``'s member id) to unload an idle model; what it said."""
        return self._parts.cooperation.ask_to_unload(member, model_id)

    def devices(self) -> list[DeviceReport]:
        """Per device: total, free, this manager's budget, and the bytes its models hold."""
        return self._parts.status.devices()

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` on every manager event (no lock held); returns the unsubscribe function."""
        return self._parts.bus.subscribe(callback)

    def events(self, limit: int | None = 50) -> list[Event]:
        """The most recent events, oldest first."""
        return self._parts.bus.recent(limit)

    # -- settings, persistence, lifetime -----------------------------------------------------------

    @property
    def config_path(self) -> Path | None:
        """The file this manager read, and where ``save()`` writes by default (settable)."""
        return self._parts.persistence.path

    @config_path.setter
    def config_path(self, path: str | os.PathLike[str] | None) -> None:
        self._parts.persistence.path = None if path is None else Path(expand_path(os.fspath(path)))

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Persist every setting, model (with its pinned flag) and alias (atomic write, merged under a lock)."""
        return self._parts.persistence.save(path)

    def close(self) -> None:
        """Refuse new work, stop the reaper, end running streams and unload every model.

        Streams in other threads stop after their current token (their ``result``
        says "interrupted"); the manager is unusable after.
        """
        shut_down(self._parts)

    def __repr__(self) -> str:
        return f"<LLMManager {self._parts.status.summary()}>"

def _wait_seconds(manager: LLMManager, wait: float | str | None) -> float:
    """A ``wait=`` argument checked: seconds (``None``: the manager's wait_timeout setting)."""
    return manager.wait_timeout if wait is None else checked(lambda: parse_wait(wait))
