"""Exceptions a user can meet, each with a message that says what to do.

Every error derives from :class:`LLMManagerError` and from the built-in type a
caller would naturally catch (``KeyError`` for an unknown id, ``ValueError``
for bad configuration), so ``except KeyError`` keeps working. Errors carry
their context as attributes; front-ends show ``str(error)`` as one line.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from .support.units import excerpt, format_bytes

__all__ = [
    "ConfigurationError",
    "CopyNotHeld",
    "DeviceShortfall",
    "GenerationError",
    "InvalidGenerationParameters",
    "LLMManagerError",
    "ManagerClosedError",
    "MemoryHolder",
    "ModelInUseError",
    "ModelLoadingError",
    "ModelNotFoundError",
    "ModelUnloadedError",
    "OutOfMemoryDuringLoad",
    "ResourceNotAvailableError",
    "WrongModelKind",
    "log_failure",
]


def log_failure(log: logging.Logger, what: str, error: BaseException) -> None:
    """An unexpected failure in a background thread or a callback: one line, the traceback only at DEBUG.

    In a kernel, anything such a thread writes lands in whichever cell runs:
    a line says what failed; the traceback is there for whoever turns on debug logging.
    """
    log.warning("%s: %s: %s", what, type(error).__name__, error)
    log.debug("%s", what, exc_info=error)


class LLMManagerError(Exception):
    """Base class of every error raised by jupyter_llm_manager; its text is a bounded excerpt (500 characters)."""

    def __str__(self) -> str:
        return excerpt(super().__str__())


class ConfigurationError(LLMManagerError, ValueError):
    """A spec, an option or a configuration file is invalid.

    ``path``, ``model_id``, ``key`` and ``line`` say where, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        model_id: str | None = None,
        key: str | None = None,
        line: int | None = None,
    ) -> None:
        self.path = path
        self.model_id = model_id
        self.key = key
        self.line = line
        where = []
        if path:
            where.append(f"{path}" + (f", line {line}" if line else ""))
        if model_id:
            where.append(f"model {model_id!r}")
        prefix = f"{': '.join(where)}: " if where else ""
        super().__init__(prefix + message)


class ModelNotFoundError(LLMManagerError, KeyError):
    """No model or alias is registered under ``model_id``."""

    def __init__(self, model_id: str, close_matches: Sequence[str] = ()) -> None:
        self.model_id = model_id
        self.close_matches = tuple(close_matches)
        message = f"No model is registered as {model_id!r}."
        if self.close_matches:
            message += " Did you mean " + " or ".join(map(repr, self.close_matches)) + "?"
        else:
            message += " Register it first with register(id, source=...) or list ids with status()."
        super().__init__(message)

    def __str__(self) -> str:  # KeyError would quote the whole message
        return excerpt(str(self.args[0]))


class CopyNotHeld(ModelNotFoundError):
    """Another member asked for a copy this manager does not hold loaded (any more): it asks another or loads."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        self.close_matches = ()
        LLMManagerError.__init__(self, f"{model_id!r} is not loaded here (any more); its requests go to another "
                                       "copy, or load one")


class ModelLoadingError(LLMManagerError, RuntimeError):
    """A model could not be loaded; the manager is left as it was."""

    def __init__(self, message: str, *, model_id: str | None = None) -> None:
        self.model_id = model_id
        super().__init__(message)


class OutOfMemoryDuringLoad(ModelLoadingError):
    """A device ran out of memory while a model was loading (raised by backends).

    The manager catches it, evicts what it may and retries once before giving
    a :class:`ResourceNotAvailableError`.
    """

    def __init__(self, message: str, *, model_id: str | None = None, devices: Sequence[str] = ()) -> None:
        self.devices = tuple(devices)
        super().__init__(message, model_id=model_id)


class ModelInUseError(LLMManagerError, RuntimeError):
    """A model cannot be unloaded because a ``use()`` lease or generation holds it."""

    def __init__(self, model_id: str, leases: int, *, loading: bool = False) -> None:
        self.model_id = model_id
        self.leases = leases
        what = ("is still loading" if loading else
                f"is in use ({leases} active lease{'s' if leases != 1 else ''}: "
                "a generation or a `with manager.use(...)` block)")
        super().__init__(f"Model {model_id!r} {what}. Wait for it to finish, or call unload(..., wait=SECONDS).")


@dataclass(frozen=True)
class MemoryHolder:
    """A loaded model that occupies memory and may not be evicted."""

    model_id: str
    bytes: int
    why: str  # "pinned" | "in use" | "loading"

    def __str__(self) -> str:
        return f"{self.model_id!r} {format_bytes(self.bytes)} ({self.why})"


@dataclass(frozen=True)
class DeviceShortfall:
    """What a load needed on one device and what the device could give."""

    device: str
    needed_bytes: int
    available_bytes: int
    budget_bytes: int
    total_bytes: int
    holders: tuple[MemoryHolder, ...] = field(default=())

    def __str__(self) -> str:
        text = (
            f"on {self.device} it needs {format_bytes(self.needed_bytes)} but only "
            f"{format_bytes(self.available_bytes)} can be made free (budget "
            f"{format_bytes(self.budget_bytes)} of {format_bytes(self.total_bytes)})"
        )
        if self.holders:
            text += "; held by " + ", ".join(map(str, self.holders))
        return text


class ModelUnloadedError(LLMManagerError, RuntimeError):
    """A model object kept from a ``use()`` block was used after the manager unloaded it (its memory is freed)."""


class ResourceNotAvailableError(LLMManagerError, RuntimeError):
    """A model does not fit, even after evicting every model that may be evicted.

    ``shortfalls`` lists, per device, what was needed, what could be freed and
    which pinned or in-use models hold the rest.
    """

    def __init__(
        self,
        message: str,
        *,
        model_id: str | None = None,
        shortfalls: Sequence[DeviceShortfall] = (),
        hint: str | None = None,
    ) -> None:
        self.model_id = model_id
        self.shortfalls = tuple(shortfalls)
        self.message = message  # without the shortfalls and the hint
        self.hint = hint
        parts = [message]
        parts.extend(f"{shortfall}." for shortfall in self.shortfalls)
        if hint:
            parts.append(hint)
        super().__init__(" ".join(parts))


class ManagerClosedError(LLMManagerError, RuntimeError):
    """The manager was closed; it loads and generates nothing more."""

    def __init__(self) -> None:
        super().__init__("this LLMManager was closed and accepts no more work; create a new one "
                         "(or use get_manager(), the kernel's manager)")


class GenerationError(LLMManagerError, RuntimeError):
    """Generation failed; the model stays loaded and usable. ``partial``: the text made before it failed."""

    def __init__(self, message: str, *, model_id: str | None = None, partial: str = "") -> None:
        self.model_id = model_id
        self.partial = partial
        super().__init__(message)


class InvalidGenerationParameters(GenerationError, ValueError):
    """A generation parameter is out of range; raised before anything runs."""


class WrongModelKind(GenerationError, ValueError):
    """A request the model's kind cannot answer (text from an embedding model, vectors from a chat model, text from
    a custom loader's object); raised before anything runs."""
