"""The manager's settings as properties (``manager.keep_alive = "10m"``), and ``configure()`` to change several.

Each property reads the current value from the frozen settings; assigning one
validates it and applies it at once (a lowered limit evicts).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ...config.settings import SETTING_NAMES, ManagerSettings, check_setting
from ...errors import ConfigurationError

if TYPE_CHECKING:
    from ..wiring import Parts

__all__ = ["SettingsAccess", "checked"]

T = TypeVar("T")


class _Setting(Generic[T]):
    """A manager setting as a property: reads the current value; assigning validates and applies it."""

    def __init__(self, doc: str) -> None:
        self.__doc__ = doc
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, manager: SettingsAccess | None, owner: type) -> T:
        if manager is None:
            return self  # type: ignore[return-value]  # the descriptor itself, for help()
        value: T = getattr(manager.settings, self.name)
        return value

    def __set__(self, manager: SettingsAccess, value: Any) -> None:
        manager.configure(**{self.name: value})


class SettingsAccess:
    """Every setting as a property of the manager, and :meth:`configure`."""

    _parts: Parts

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
    max_context_auto_limit = _Setting[int]("The most tokens max_context: auto grows a context to (a model's own "
                                           "max_context_auto_limit wins).")
    share = _Setting[bool]("Lend loaded models to the machine's other managers and borrow theirs (one copy per "
                           "machine); a per-call share= or %%llm --no-share turns it off for one request.")
    borrow_timeout = _Setting[float]("Seconds a borrowed answer may stay silent before it fails with a "
                                     "GenerationError naming the copy's holder.")

    @property
    def settings(self) -> ManagerSettings:
        """Every setting now, as one frozen :class:`~jupyter_llm_manager.config.settings.ManagerSettings`."""
        return self._parts.state.settings

    def configure(self, **settings: Any) -> None:
        """Change settings (validated together); lowered limits evict at once."""
        if not settings:
            return
        for name in settings:
            if name not in SETTING_NAMES:
                raise ConfigurationError(f"unknown setting {name!r}; settings: {', '.join(SETTING_NAMES)}")
        values = {name: checked(partial(check_setting, name, value)) for name, value in settings.items()}
        self._parts.registration.check_default_model(values.get("default_model"))
        self._parts.limits.configure(values)
        if {"cooperate", "ledger_path"} & set(settings):
            self._parts.cooperation.stop()  # it joins the (new) ledger again at its next placement, if it cooperates


def checked(make: Callable[[], T]) -> T:
    """``make()``, its ``ValueError`` turned into a :class:`ConfigurationError`."""
    try:
        return make()
    except ConfigurationError:
        raise
    except ValueError as error:
        raise ConfigurationError(str(error)) from None
