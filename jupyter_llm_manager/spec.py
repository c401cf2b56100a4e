"""A validated description of one model: :class:`ModelSpec`, and its secrets.

A spec says what to load and how; it loads nothing. Every value is checked
and normalized here (``fp16`` → ``float16``, ``"30m"`` → 1800.0), so the
rest of the package trusts specs. :attr:`ModelSpec.instance_key` is the one
place that decides whether two ids share one loaded instance.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import math
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, InvalidGenerationParameters
from .generation import GenerationParams
from .secret import (
    Secret,
    canonical,
    expand_references,
    has_credentials,
    shown_url,
    url_credentials,
    url_without_literal_credentials,
)
from .units import brief, parse_duration, parse_size

__all__ = [
    "DTYPES",
    "KIND_PRIORITY",
    "QUANTIZATIONS",
    "ModelSpec",
    "Secret",
    "check_model_id",
    "expand_path",
    "looks_like_path",
]

log = logging.getLogger(__name__)

DTYPES = {
    "auto": "auto", "float32": "float32", "fp32": "float32", "float": "float32",
    "float16": "float16", "fp16": "float16", "half": "float16",
    "bfloat16": "bfloat16", "bf16": "bfloat16",
}
QUANTIZATIONS = {
    "4bit": "4bit", "4": "4bit", "int4": "4bit", "nf4": "4bit", "fp4": "4bit",
    "8bit": "8bit", "8": "8bit", "int8": "8bit",
}
_DEVICE = re.compile(r"^(auto|cpu|mps|balanced|cuda(:\d+)?)$")
_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:@/+-]{0,199}")  # used with fullmatch: no trailing newline
#: Seed 004's tiers: the default priority of each kind of model; ``asr`` is also protected.
KIND_PRIORITY = {"llm": 0, "tts": 1, "asr": 2}
PROTECTED_KINDS = frozenset({"asr"})
_KINDS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def expand_path(text: str) -> str:
    """Expand ``~`` and ``${ENV}`` in a path, and nothing else (no shell, no globs)."""
    expanded = expand_references(text)
    return os.path.expanduser(expanded)


def looks_like_path(source: str) -> bool:
    """Whether a source names a local folder rather than a Hugging Face Hub id."""
    text = expand_path(source)
    return (text.startswith(("/", "./", "../", "~", ".\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))
            or text in {".", ".."} or os.path.exists(text))


def check_model_id(model_id: object, *, path: str | None = None) -> str:
    """A model id or alias: letters, digits and ``_ . : @ / + -`` (Hub ids are valid ids)."""
    if not isinstance(model_id, str) or not _ID.fullmatch(model_id):
        raise ConfigurationError(
            f"{brief(model_id)} is not a valid model id: use letters, digits and _ . : @ / + -", path=path)
    return model_id


_SECRET_OPTION_KEYS = frozenset({"token", "use_auth_token", "api_key", "password"})


# -- field converters: each returns the normalized value or raises ValueError --

def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {brief(value)}")
    return value.strip()


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {brief(value)}")
    return value


def _integer(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {brief(value)}")
        return value
    return convert


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"expected a finite number > 0, got {brief(value)}")
    return float(value)


def _dtype(value: Any) -> str:
    text = str(value).lower().removeprefix("torch.")
    if text not in DTYPES:
        raise ValueError(f"unknown dtype {brief(value)}; use one of auto, float32, float16, bfloat16")
    return DTYPES[text]


def _quantization(value: Any) -> str | None:
    if value in (None, False, "none", "null", ""):
        return None
    text = str(value).lower()
    if text not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {brief(value)}; use 4bit, 8bit or null")
    return QUANTIZATIONS[text]


def _device(value: Any) -> str | tuple[str, ...]:
    if isinstance(value, (list, tuple)):
        devices = tuple(_one_device(item) for item in value)
        if not devices or any(not d.startswith("cuda:") for d in devices):
            raise ValueError(f"a multi-GPU placement is a list of cuda:N devices, got {brief(value)}")
        return devices if len(devices) > 1 else devices[0]
    return _one_device(value)


def _one_device(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"a device is a name such as auto, cpu or cuda:0, got {brief(value)}")
    text = value.strip().lower()
    if not _DEVICE.match(text):
        raise ValueError(f"unknown device {brief(value)}; use auto, cpu, cuda, cuda:N, mps, balanced "
                         "(every GPU) or a list of cuda:N")
    return text


def _secret(value: Any) -> Secret:
    """A secret is text: an ``${ENV}`` reference (or a literal). A wrong value is never shown, whatever its type."""
    if isinstance(value, Secret):
        return value
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected text, best an ${{ENV_VARIABLE}} reference, got {_kind_of(value)} "
                         "(its value is not shown: it may be a secret)")
    return Secret(value.strip())


def _kind_of(value: Any) -> str:
    return "an empty text" if isinstance(value, str) else f"a value of type {type(value).__name__}"


def _headers(value: Any) -> dict[str, Secret]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of header name to value, got {_kind_of(value)} "
                         "(its value is not shown: headers may hold secrets)")
    headers = {}
    for name, text in value.items():
        if not isinstance(name, str) or not name.strip():
            raise ValueError(f"a header name is text, got {_kind_of(name)}")
        try:
            headers[name.strip()] = _secret(text)
        except ValueError as error:
            raise ValueError(f"header {name.strip()!r}: {error}") from None
    return headers


def _url(value: Any) -> str:
    """A server URL; credentials written into it (``user:key@``) are kept out of sight like any secret."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a URL such as http://host:8000/v1, got {_kind_of(value)}"
                         + ("" if has_credentials(str(value)) else f": {brief(value)}"))
    return value.strip()


def _mapping(value: Any) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping, got {brief(value)}")
    canonical(value)  # bounded: refuses what would be too costly to key, show or save
    return {str(key): item for key, item in value.items()}


def _load_kwargs(value: Any) -> dict[str, Any]:
    """Keyword arguments for ``from_pretrained``; a token among them is kept as a :class:`Secret`."""
    kwargs = _mapping(value)
    for key in _SECRET_OPTION_KEYS & set(kwargs):
        if kwargs[key] is not None and not isinstance(kwargs[key], bool):
            kwargs[key] = _secret(kwargs[key])
    return kwargs


def _generation(value: Any) -> dict[str, Any]:
    mapping = _mapping(value)
    try:
        GenerationParams.build(mapping)
    except InvalidGenerationParameters as error:
        raise ValueError(str(error)) from None
    return mapping


def _kind(value: Any) -> str:
    text = _string(value).lower()
    if not _KINDS.match(text):
        raise ValueError(f"kind is a short name such as llm, tts or asr, got {brief(value)}")
    return text


def _keep_alive(value: Any) -> float | None:
    return parse_duration(value)


def _size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What to load for one model id, and how. Loads nothing.

    Fields not used by a backend are ignored by it: ``source`` and the loading
    options are for ``transformers``; ``base_url``, ``model``, ``api_key``,
    ``timeout``, ``max_retries`` and ``headers`` for ``openai``; ``options``
    carries settings for third-party backends.
    """

    id: str
    source: str | None = None
    backend: str = "transformers"
    revision: str | None = None
    device: str | tuple[str, ...] = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    trust_remote_code: bool = False
    token: Secret | None = None
    tokenizer: str | None = None
    max_context: int | None = None
    required_memory: int | None = None
    pinned: bool = False
    priority: int | None = None
    protected: bool | None = None
    kind: str = "llm"
    keep_alive: float | None = None
    preload: bool = False
    generation: dict[str, Any] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    base_url: str | None = None
    model: str | None = None
    api_key: Secret | None = None
    timeout: float | None = None
    max_retries: int | None = None
    headers: dict[str, Secret] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    builtin: bool = False

    @classmethod
    def from_mapping(
        cls, model_id: str, data: Mapping[str, Any], *, path: str | os.PathLike | None = None,
        check_paths: bool = True,
    ) -> ModelSpec:
        """Validate a mapping (a YAML entry or ``register`` keywords) into a spec.

        Raises :class:`ConfigurationError` naming the file, the model, the key
        and, for an unknown key, the closest known one. ``check_paths`` also
        requires a local source folder to exist now.
        """
        where: dict[str, Any] = {"path": str(path) if path else None, "model_id": model_id}
        check_model_id(model_id, path=where["path"])
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"expected a mapping of options, got {brief(data)}", **where)
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in _CONVERTERS:
                close = difflib.get_close_matches(str(key), list(_CONVERTERS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(_CONVERTERS)}"
                raise ConfigurationError(f"unknown key {brief(key)}{hint}", key=brief(key), **where)
            if value is None and key not in _NULLABLE:
                continue
            try:
                values[key] = _CONVERTERS[key](value)
            except ValueError as error:
                raise ConfigurationError(f"{key}: {error}", key=key, **where) from None
        spec = cls(id=model_id, **values)
        spec._check_backend_fields(where, check_paths)
        return spec

    def _check_backend_fields(self, where: dict[str, Any], check_paths: bool) -> None:
        if self.backend == "transformers" and not self.source:
            raise ConfigurationError("a transformers model needs a source: a Hub id or a local folder",
                                     key="source", **where)
        if self.backend == "openai" and not self.base_url:
            raise ConfigurationError("an openai model needs base_url, e.g. http://host:8000/v1",
                                     key="base_url", **where)
        hub_id = re.match(r"^[\w.-]+(/[\w.-]+)?$", self.source or "")
        if self.source and self.backend == "transformers" and not looks_like_path(self.source) and not hub_id:
            raise ConfigurationError(
                f"source {brief(self.source)} is neither an existing local folder nor a Hub id "
                "like 'org/name'", key="source", **where)
        local = self.source and self.backend == "transformers" and looks_like_path(self.source)
        if check_paths and local and not os.path.exists(expand_path(self.source or "")):
            raise ConfigurationError(
                f"local path {brief(expand_path(self.source or ''))} does not exist; check the path "
                "(relative paths start from the kernel's working directory)", key="source", **where)

    @property
    def location(self) -> str:
        """Where the model comes from, as it may be shown: its source, or its server's URL without credentials."""
        return self.source or shown_url(self.base_url or "")

    @property
    def effective_priority(self) -> int:
        """``priority``, else the default of its ``kind`` (llm 0, tts 1, asr 2; others 0)."""
        return self.priority if self.priority is not None else KIND_PRIORITY.get(self.kind, 0)

    @property
    def effective_protected(self) -> bool:
        """``protected``, else whether its ``kind`` is protected (``asr``)."""
        return self.protected if self.protected is not None else self.kind in PROTECTED_KINDS

    @functools.cached_property
    def local_path(self) -> Path | None:
        """The resolved local folder, when the source is one (resolved once: a later ``cd`` does not move it)."""
        if self.source and looks_like_path(self.source):
            return Path(expand_path(self.source)).resolve()
        return None

    @functools.cached_property
    def instance_key(self) -> str:
        """The one key that decides sharing: equal keys load the same weights the same way."""
        if self.base_url is not None:  # another key or header is another client: permissions, quota, billing
            key = f"{self.backend}:{shown_url(self.base_url).rstrip('/')}#{self.model or self.id}"
            in_url = url_credentials(self.base_url)
            credentials = [f"url={in_url.fingerprint}"] if in_url is not None else []
            credentials += [f"key={self.api_key.fingerprint}"] if self.api_key else []
            credentials += [f"{name}={value.fingerprint}" for name, value in sorted(self.headers.items())]
            return key + (f"|{','.join(credentials)}" if credentials else "")
        location = str(self.local_path) if self.local_path else self.source
        device = ",".join(self.device) if isinstance(self.device, tuple) else self.device
        key = f"{self.backend}:{location}@{self.revision or 'main'}|{self.dtype}|{self.quantization or 'full'}|{device}"
        if self.tokenizer or self.trust_remote_code or self.load_kwargs or self.options:
            details = canonical({"tokenizer": self.tokenizer, "trust_remote_code": self.trust_remote_code,
                                 "load_kwargs": self.load_kwargs, "options": self.options})
            key += "|" + hashlib.sha1(details.encode()).hexdigest()[:8]
        return key

    @functools.cached_property
    def estimate_key(self) -> str:
        """Everything an estimate may depend on: the whole spec but its id."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("id", "builtin")}
        return hashlib.sha256(canonical(values).encode()).hexdigest()

    def with_changes(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated like a new spec)."""
        return replace(self, **changes)

    def to_mapping(self, *, warn: bool = False) -> dict[str, Any]:
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
            entry[name] = self._saved_value(name, value, warn)
        return {k: v for k, v in entry.items() if v is not None or k in _NULLABLE}

    def _saved_value(self, name: str, value: Any, warn: bool) -> Any:
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
            kept = {k: self._saved_value(f"{name}.{k}", v, warn) for k, v in value.items()}
            return {k: v for k, v in kept.items() if v is not None or not isinstance(value[k], Secret)} or None
        if name == "keep_alive":
            return "never" if value == float("inf") else value
        if isinstance(value, tuple):
            return list(value)
        return value

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_mapping().items()
                          if not isinstance(v, dict) or v)
        return f"ModelSpec(id={self.id!r}, {shown})"


_warned: set[tuple[str, str]] = set()


def _warn_once(model_id: str, name: str, message: str) -> None:
    if (model_id, name) not in _warned:
        _warned.add((model_id, name))
        log.warning("%s", message)


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "source": _string, "backend": _string, "revision": _optional(_string),
    "device": _device, "dtype": _dtype, "quantization": _quantization,
    "trust_remote_code": _boolean, "token": _optional(_secret), "tokenizer": _optional(_string),
    "max_context": _optional(_integer(1)), "required_memory": _size, "pinned": _boolean,
    "priority": _optional(_integer(-(10**9))), "protected": _optional(_boolean), "kind": _kind,
    "keep_alive": _keep_alive, "preload": _boolean,
    "generation": _generation, "load_kwargs": _load_kwargs,
    "base_url": _optional(_url), "model": _optional(_string), "api_key": _optional(_secret),
    "timeout": _optional(_number), "max_retries": _optional(_integer(0)), "headers": _headers,
    "options": _mapping, "builtin": _boolean,
}
_NULLABLE = {"quantization"}
