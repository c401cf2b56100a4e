"""The manager's settings: one frozen record, one validator per setting, one saved form.

Every setting is a field of :class:`ManagerSettings`, so the YAML
``defaults:`` block, the ``LLMManager`` arguments, the properties, ``%config``
and ``save()`` all go through the same list: a new field is read, validated,
shown and saved without touching any of them.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from ..support.deadlines import parse_wait
from ..support.units import NEVER, brief, parse_duration, parse_size

__all__ = ["AUTO_CONTEXT_FLOOR", "SETTING_NAMES", "ManagerSettings", "check_max_context_auto_limit", "check_setting"]


def check_max_loaded_models(value: Any) -> int | None:
    """A count cap: ``None`` (no cap) or an integer >= 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_loaded_models must be an integer >= 1 or null, got {brief(value)}")
    return value


def check_memory_fraction(value: Any) -> float:
    """A fraction of each device's total memory, in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise ValueError(f"memory_fraction must be a number in (0, 1], got {brief(value)}")
    return float(value)


def check_memory_budget(value: Any) -> int | dict[str, int] | None:
    """An absolute budget: one size for every device, or a size per device."""
    if value is None:
        return None
    if isinstance(value, Mapping):
        return {_device_name(device): parse_size(size) for device, size in value.items()}
    return parse_size(value)


def _device_name(device: Any) -> str:
    if not isinstance(device, str) or not device.strip():
        raise ValueError(f"memory_budget keys are devices such as cpu or cuda:0, got {brief(device)}")
    return device.strip().lower()


def check_keep_alive(value: Any) -> float | None:
    """Idle seconds before a model is unloaded; ``None`` or ``never`` keep it."""
    return parse_duration(value)


def check_default_model(value: Any) -> str | None:
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise ValueError(f"default_model must be a model id, got {brief(value)}")
    return value


def check_wait_timeout(value: Any) -> float:
    """Seconds a request waits for capacity; ``never``/``inf``/``null``: no limit."""
    return parse_wait(value, what="wait_timeout")


def check_max_queue(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_queue must be an integer >= 1, got {brief(value)}")
    return value


def check_max_memory_per_model(value: Any) -> int | None:
    """The most memory one model may take (``max_memory_per_model`` of a task layout's ``inference`` block too); ``auto``/``null``: no cap."""
    if value is None or (isinstance(value, str) and value.strip().lower() == "auto"):
        return None
    return parse_size(value)


def check_cooperate(value: Any) -> bool:
    """Whether this manager shares the machine's memory with the other managers of this user (a ledger)."""
    if not isinstance(value, bool):
        raise ValueError(f"cooperate must be true or false, got {brief(value)}")
    return value


def check_ledger_path(value: Any) -> str | None:
    """Where the ledger of the machine's managers is (``None``: $JUPYTER_LLM_MANAGER_LEDGER, else the runtime dir)."""
    if value is None:
        return None
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise ValueError(f"ledger_path must be a file path, got {brief(value)}")
    return value.strip()


def check_max_loaded_adapters(value: Any) -> int:
    """LoRA adapters resident at once on one loaded base (an integer >= 1)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"max_loaded_adapters must be an integer >= 1, got {brief(value)}")
    return value


#: ``max_context: auto`` starts at this many tokens: a ceiling below it could never be met.
AUTO_CONTEXT_FLOOR = 512
_MAX_CONTEXT = 1 << 21


def check_max_context_auto_limit(value: Any) -> int:
    """The most tokens ``max_context: auto`` grows a context to (a whole number from 512)."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not AUTO_CONTEXT_FLOOR <= value <= _MAX_CONTEXT:
        raise ValueError(f"max_context_auto_limit must be a whole number of tokens from {AUTO_CONTEXT_FLOOR} to "
                         f"{_MAX_CONTEXT:,}, got {brief(value)}")
    return value


def check_share(value: Any) -> bool:
    """Whether this manager lends its loaded models to the machine's other members and borrows theirs."""
    if not isinstance(value, bool):
        raise ValueError(f"share must be true or false, got {brief(value)}")
    return value


def check_borrow_timeout(value: Any) -> float:
    """Seconds a borrowed answer may stay silent before the borrower gives up (a positive duration)."""
    seconds = parse_duration(value)
    if seconds is None or seconds < 1 or seconds == NEVER or math.isinf(seconds):
        raise ValueError(f"borrow_timeout must be a duration of 1s or more, such as 30s or 2m, got {brief(value)}")
    return seconds


_CHECKS: dict[str, Callable[[Any], Any]] = {
    "max_loaded_models": check_max_loaded_models,
    "memory_fraction": check_memory_fraction,
    "memory_budget": check_memory_budget,
    "keep_alive": check_keep_alive,
    "default_model": check_default_model,
    "wait_timeout": check_wait_timeout,
    "max_queue": check_max_queue,
    "max_memory_per_model": check_max_memory_per_model,
    "cooperate": check_cooperate,
    "ledger_path": check_ledger_path,
    "max_loaded_adapters": check_max_loaded_adapters,
    "max_context_auto_limit": check_max_context_auto_limit,
    "share": check_share,
    "borrow_timeout": check_borrow_timeout,
}


@dataclass(frozen=True)
class ManagerSettings:
    """Manager-wide settings, validated. Replace, never mutate: readers get a consistent snapshot."""

    max_loaded_models: int | None = None
    memory_fraction: float = 0.9
    memory_budget: int | dict[str, int] | None = None
    keep_alive: float | None = None
    default_model: str | None = None
    wait_timeout: float = 120.0
    max_queue: int = 256
    max_memory_per_model: int | None = None
    cooperate: bool = True
    ledger_path: str | None = None
    max_loaded_adapters: int = 8  # LoRA adapters resident per base; they do not count in max_loaded_models
    max_context_auto_limit: int = 8192  # the most tokens max_context: auto grows to (a model may set its own)
    share: bool = True  # lend loaded models to the machine's other members, and borrow theirs
    borrow_timeout: float = 30.0  # seconds a borrowed answer may stay silent before the borrower gives up

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> ManagerSettings:
        """Settings from a mapping of known names (``ValueError`` names the bad one)."""
        return cls().with_values(data)

    def with_values(self, data: Mapping[str, Any]) -> ManagerSettings:
        """A copy with some settings changed, each validated."""
        return replace(self, **{name: check_setting(name, value) for name, value in data.items()})

    def to_mapping(self) -> dict[str, Any]:
        """Every setting in the form a YAML file keeps (durations as text, ``never`` for no limit)."""
        saved = asdict(self)
        for name in ("keep_alive", "wait_timeout", "borrow_timeout"):
            saved[name] = _duration_text(saved[name])
        return saved


#: Every setting, in declaration order; each has exactly one validator in ``_CHECKS``.
SETTING_NAMES: tuple[str, ...] = tuple(f.name for f in fields(ManagerSettings))


def check_setting(name: str, value: Any) -> Any:
    """The validated value of setting ``name`` (``KeyError`` for an unknown name, ``ValueError`` for a bad value)."""
    try:
        check = _CHECKS[name]
    except KeyError:
        raise KeyError(name) from None
    try:
        return check(value)
    except ValueError as error:
        message = str(error)
        raise ValueError(message if message.startswith(name) else f"{name}: {message}") from None


def _duration_text(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    if seconds == NEVER or math.isinf(seconds):
        return "never"
    return f"{seconds:g}s"
