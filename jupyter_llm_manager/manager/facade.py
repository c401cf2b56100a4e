"""The manager's public API: :class:`LLMManager`, a facade over the parts of this package.

The facade checks arguments and calls one part per job (see the package
docstring: which part decides what, and the one lock rule); the parts are
made and connected in :mod:`.wiring`, the settings are properties
(:mod:`.api.settings`), the ``async`` forms live in :mod:`.api.asynchronous`, and
:func:`~.kernel.get_manager` gives the kernel's own manager.
"""

from __future__ import annotations

import enum
import os
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, TypeVar

from ..backends import Backend, get_backend
from ..config.files import ConfigFile, find_config_path, load_config
from ..config.settings import SETTING_NAMES
from ..devices import DeviceProbe, probe_devices
from ..errors import InvalidGenerationParameters
from ..generation import GenerationParams, GenerationResult, Prompt, normalize_prompt
from ..reports import UnloadReport
from ..support.deadlines import parse_wait
from .api.asynchronous import AsyncCalls
from .api.registry import RegistryCalls
from .api.reports import ReportCalls
from .api.settings import SettingsAccess, checked
from .generations import Ask, TextStream, checked_params, checked_texts, text_model
from .handles import Lease, ModelHandle
from .sharing.borrowing import Borrowing
from .state import Ticket
from .wiring import shut_down, wire

__all__ = ["FROM_CONFIG", "LLMManager", "borrowing_of"]

T = TypeVar("T")


class _FromConfig(enum.Enum):
    FROM_CONFIG = "the configuration file's value, else the built-in default"


#: An argument left to the configuration file (``defaults:``), else to the built-in default.
FROM_CONFIG = _FromConfig.FROM_CONFIG
_Given = Literal[_FromConfig.FROM_CONFIG]


class LLMManager(RegistryCalls, ReportCalls, SettingsAccess, AsyncCalls):
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
                 max_loaded_adapters: int | _Given = FROM_CONFIG, max_context_auto_limit: int | _Given = FROM_CONFIG,
                 share: bool | _Given = FROM_CONFIG, borrow_timeout: str | float | _Given = FROM_CONFIG,
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

    # -- loading and using ------------------------------------------------------------------------

    def load(self, model_id: str, *, force_reload: bool = False, pin: bool = False,
             wait: float | str | None = None) -> ModelHandle:
        """Load now (otherwise loading is lazy); ``wait``: seconds to wait for room (default wait_timeout)."""
        if pin:
            self.pin(model_id)
        if force_reload:
            self.unload(model_id)
        self._lease(model_id, _wait_seconds(self, wait)).release()
        # returns once the ledger says it is loaded and idle: another kernel's plan or load right after this one
        # sees it as it is (not as loading, nor in use by this load)
        self._parts.cooperation.membership.published()
        return ModelHandle(self, model_id)

    def use(self, model_id: str, *, wait: float | str | None = None) -> Lease:
        """``with manager.use(id) as lm:`` — ``lm.model`` and ``lm.tokenizer``, never evicted meanwhile."""
        seconds = _wait_seconds(self, wait)
        return Lease(model_id, lambda: self._lease(model_id, seconds, activate=True), lambda: self.spec(model_id))

    def generate(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
                 wait: float | str | None = None, share: bool | None = None, **params: Any) -> GenerationResult:
        """Generate an answer (a string prompt goes through the chat template unless ``raw``).

        ``share``: whether another process's loaded copy may answer (default: the ``share`` setting).
        """
        spec = text_model(self.spec(model_id))
        ask = Ask(normalize_prompt(prompt, system=system), self.generation_params(spec.id, **params), raw,
                  share=self._sharing(share))
        return self._parts.generations.generate(model_id, spec.id, ask, wait=_wait_seconds(self, wait))

    def stream(self, model_id: str, prompt: Prompt, *, system: str | None = None, raw: bool = False,
               wait: float | str | None = None, share: bool | None = None, **params: Any) -> TextStream:
        """Text pieces as they are made; ``.result`` once done. Loads (or borrows) when iteration starts."""
        spec = text_model(self.spec(model_id))
        ask = Ask(normalize_prompt(prompt, system=system), self.generation_params(spec.id, **params), raw,
                  share=self._sharing(share))
        return self._parts.generations.stream(model_id, spec.id, ask, wait=_wait_seconds(self, wait))

    def generation_params(self, model_id: str, **params: Any) -> GenerationParams:
        """The checked parameters a generation would use (its spec's, then ``params``); loads nothing."""
        spec = self.spec(model_id)
        return checked_params(spec, self._parts.backends(spec.backend), params)

    def embed(self, model_id: str, texts: str | Sequence[str], *, wait: float | str | None = None,
              share: bool | None = None) -> list[list[float]]:
        """One unit-length vector per text, from a model registered with ``mode: embed``."""
        spec = self.spec(model_id)
        texts = checked_texts(spec, texts)
        if not texts:
            return []
        ask = Ask(texts=texts, share=self._sharing(share))
        return self._parts.generations.embed(model_id, spec.id, ask, wait=_wait_seconds(self, wait))

    def _sharing(self, share: bool | None) -> bool:
        if share is None:
            return self.share
        if not isinstance(share, bool):
            raise InvalidGenerationParameters(f"share is True or False, got {share!r}")
        return share

    def _lease(self, model_id: str, seconds: float, *, activate: bool = False) -> Ticket:
        """A lease from admission (with its base's, for an adapter), waiting up to ``seconds`` on this manager's clock."""
        return self._parts.admission.acquire(model_id, self._parts.state.deadline(seconds), activate=activate)

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

    # -- lifetime -----------------------------------------------------------

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


def borrowing_of(manager: LLMManager) -> Borrowing:
    """``manager``'s borrowing part: ``serve`` asks other members' copies of ids it does not register itself."""
    return manager._parts.borrowing
