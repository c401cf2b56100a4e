"""What a spec must say for its backend, and how a spec is written back to YAML (secrets as references only)."""

from __future__ import annotations

import logging
import os
import re
from dataclasses import fields
from typing import Any, Protocol

from ..errors import ConfigurationError
from ..support.units import brief
from .secrets import Secret, shown_url, url_without_literal_credentials
from .spec_fields import INHERITED, LOCAL_BACKENDS, NULLABLE, expand_path, looks_like_path

__all__ = ["check_backend_fields", "spec_mapping"]

log = logging.getLogger(__name__)


class _Fields(Protocol):
    """The fields of a spec the checks read (a :class:`~.spec.ModelSpec`, frozen)."""

    @property
    def source(self) -> str | None: ...
    @property
    def backend(self) -> str: ...
    @property
    def base(self) -> str | None: ...
    @property
    def adapter(self) -> str | None: ...
    @property
    def loader(self) -> str | None: ...
    @property
    def max_context(self) -> int | str | None: ...
    @property
    def max_context_auto_limit(self) -> int | None: ...
    @property
    def base_url(self) -> str | None: ...


def check_backend_fields(self: _Fields, where: dict[str, Any], check_paths: bool) -> None:
    """The fields a spec's backend needs, and those that do not go together (a :class:`ConfigurationError`)."""
    if (self.base is None) != (self.adapter is None):
        given, missing = ("base", "adapter") if self.base else ("adapter", "base")
        raise ConfigurationError(f"{given} without {missing}: a LoRA adapter is registered with both, "
                                 "base=MODEL_ID and adapter=FOLDER (or a Hub id, or a GGUF LoRA file)",
                                 key=missing, **where)
    if self.base is not None and self.source is None:
        return  # an adapter takes its loading fields from its base when it is registered: see on_base
    if self.backend in LOCAL_BACKENDS and not self.source:
        what = "a Hub id, a local folder or a .gguf file" if self.backend == "transformers" else "a .gguf file"
        raise ConfigurationError(f"a {self.backend} model needs a source: {what}", key="source", **where)
    if (self.backend == "loader") != bool(self.loader):
        raise ConfigurationError("loader: package.module:function is what the loader backend loads (and only "
                                 "it); give loader without backend, or remove it", key="loader", **where)
    if self.max_context_auto_limit is not None and self.max_context != "auto":
        raise ConfigurationError("max_context_auto_limit is the ceiling of max_context: auto; write max_context: "
                                 "auto, or remove it", key="max_context_auto_limit", **where)
    if self.max_context == "auto" and self.backend != "llama_cpp":
        raise ConfigurationError("max_context: auto picks the largest context that fits, which only the "
                                 "llama_cpp backend can change at load time; give a number of tokens",
                                 key="max_context", **where)
    if self.backend == "openai" and not self.base_url:
        raise ConfigurationError("an openai model needs base_url, e.g. http://host:8000/v1",
                                 key="base_url", **where)
    hub_id = re.match(r"^[\w.-]+(/[\w.-]+)?$", self.source or "")
    if self.source and self.backend in LOCAL_BACKENDS and not looks_like_path(self.source) and not hub_id:
        raise ConfigurationError(
            f"source {brief(self.source)} is neither an existing local folder nor a Hub id "
            "like 'org/name'", key="source", **where)
    local = self.source and self.backend in LOCAL_BACKENDS and looks_like_path(self.source)
    if check_paths and local and not os.path.exists(expand_path(self.source or "")):
        raise ConfigurationError(
            f"local path {brief(expand_path(self.source or ''))} does not exist; check the path "
            "(relative paths start from the kernel's working directory)", key="source", **where)


def spec_mapping(self: Any, *, warn: bool = False) -> dict[str, Any]:
    """The YAML entry for this spec: non-default fields, secrets as ``${ENV}`` only.

    ``warn`` (when saving) logs, once per model and field, what is not written.
    """
    entry: dict[str, Any] = {}
    for spec_field in fields(self):
        name = spec_field.name
        if name in ("id", "builtin"):
            continue
        value = getattr(self, name)
        default = spec_field.default_factory() if callable(spec_field.default_factory) else spec_field.default
        if value == default and name != "backend":
            continue
        if self.base is not None and name in INHERITED:
            continue  # the base's, written on the base

        entry[name] = _saved_value(self, name, value, warn)
    return {k: v for k, v in entry.items() if v is not None or k in NULLABLE}

def _saved_value(self: Any, name: str, value: Any, warn: bool) -> Any:
    if isinstance(value, Secret):
        if value.is_literal and warn:
            _warn_once(self.id, name, f"{name} of model {self.id!r} was given in clear and is not saved; "
                                      "write it as ${ENV_VARIABLE} to keep it")
        return value.saved_form()
    if name == "base_url" and shown_url(value) != value:
        if warn:
            _warn_once(self.id, name, f"the credentials in base_url of model {self.id!r} are not saved; give "
                                      "them as api_key: ${ENV_VARIABLE} or in headers")
        return url_without_literal_credentials(value)
    if name in ("headers", "load_kwargs"):
        kept = {k: _saved_value(self, f"{name}.{k}", v, warn) for k, v in value.items()}
        return {k: v for k, v in kept.items() if v is not None or not isinstance(value[k], Secret)} or None
    if name == "keep_alive":
        return "never" if value == float("inf") else value
    if isinstance(value, tuple):
        return list(value)
    return value


_warned: set[tuple[str, str]] = set()


def _warn_once(model_id: str, name: str, message: str) -> None:
    if (model_id, name) not in _warned:
        _warned.add((model_id, name))
        log.warning("%s", message)
