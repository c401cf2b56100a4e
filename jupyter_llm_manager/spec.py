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
import hmac
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigurationError, InvalidGenerationParameters
from .generation import GenerationParams
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
_ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_ENV_IN_TEXT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_ID = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.:@/+-]*$")
_FINGERPRINT_SALT = secrets.token_bytes(16)  # per process: fingerprints cannot be matched outside it
#: Seed 004's tiers: the default priority of each kind of model; ``asr`` is also protected.
KIND_PRIORITY = {"llm": 0, "tts": 1, "asr": 2}
PROTECTED_KINDS = frozenset({"asr"})
_KINDS = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


class Secret:
    """A token or API key: an ``${ENV}`` reference, or a literal kept out of sight.

    The value is read from the environment only by :meth:`resolve`, when a
    model loads. ``repr`` and ``str`` never show a literal value, and a literal
    is never written to a saved file.
    """

    __slots__ = ("_literal", "reference")

    def __init__(self, text: str) -> None:
        match = _ENV_REFERENCE.match(text.strip())
        self.reference: str | None = match.group(1) if match else None
        self._literal: str | None = None if match else text

    @property
    def is_literal(self) -> bool:
        return self.reference is None

    def resolve(self) -> str | None:
        """The secret's value now: the environment variable, or the literal."""
        return os.environ.get(self.reference) if self.reference else self._literal

    @property
    def fingerprint(self) -> str:
        """Tells secrets apart without revealing them: ``${NAME}``, or a salted, per-process digest."""
        if self.reference:
            return f"${{{self.reference}}}"
        digest = hmac.new(_FINGERPRINT_SALT, (self._literal or "").encode(), hashlib.sha256).hexdigest()
        return f"inline-{digest[:8]}"

    def saved_form(self) -> str | None:
        """``${NAME}`` for a reference; ``None`` for a literal (never saved)."""
        return f"${{{self.reference}}}" if self.reference else None

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Secret) and self.reference == other.reference
                and self._literal == other._literal)

    def __hash__(self) -> int:
        return hash((self.reference, self._literal))

    def __repr__(self) -> str:
        return f"Secret({self.saved_form() or '***'!r})"

    __str__ = __repr__


def expand_path(text: str) -> str:
    """Expand ``~`` and ``${ENV}`` in a path, and nothing else (no shell, no globs)."""
    expanded = _ENV_IN_TEXT.sub(lambda m: os.environ.get(m.group(1), m.group(0)), text)
    return os.path.expanduser(expanded)


def looks_like_path(source: str) -> bool:
    """Whether a source names a local folder rather than a Hugging Face Hub id."""
    text = expand_path(source)
    return (text.startswith(("/", "./", "../", "~", ".\\")) or bool(re.match(r"^[A-Za-z]:[\\/]", text))
            or text in {".", ".."} or os.path.exists(text))


def check_model_id(model_id: object, *, path: str | None = None) -> str:
    """A model id or alias: letters, digits and ``_ . : @ / + -`` (Hub ids are valid ids)."""
    if not isinstance(model_id, str) or not _ID.match(model_id):
        raise ConfigurationError(
            f"{model_id!r} is not a valid model id: use letters, digits and _ . : @ / + -", path=path)
    return model_id


#: The most values (mapping entries, list items, scalars) one option mapping may hold.
MAX_OPTION_VALUES = 10_000
_SECRET_OPTION_KEYS = frozenset({"token", "use_auth_token", "api_key", "password"})


def canonical(value: Any, *, limit: int = MAX_OPTION_VALUES) -> str:
    """One text per value, the same for equal values (mapping keys sorted), secrets as fingerprints.

    What caches and instance keys are built from. Its cost is bounded:
    more than ``limit`` values (an alias bomb, say) is a ``ValueError``.
    """
    budget = [limit]

    def walk(item: Any) -> str:
        budget[0] -= 1
        if budget[0] < 0:
            raise ValueError(f"too large: more than {limit} values")
        if isinstance(item, Secret):
            return json.dumps(item.fingerprint)
        if item is None or isinstance(item, (bool, int, float, str)):
            return json.dumps(item)
        if isinstance(item, Mapping):
            entries = sorted((str(key), walk(child)) for key, child in item.items())
            return "{" + ",".join(f"{json.dumps(key)}:{text}" for key, text in entries) + "}"
        if isinstance(item, (list, tuple, set, frozenset)):
            return "[" + ",".join(walk(child) for child in item) + "]"
        return json.dumps(f"{type(item).__name__}:{item}"[:200])

    return walk(value)


# -- field converters: each returns the normalized value or raises ValueError --

def _string(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _optional(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    return lambda value: None if value is None else convert(value)


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {value!r}")
    return value


def _integer(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise ValueError(f"expected an integer >= {minimum}, got {value!r}")
        return value
    return convert


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ValueError(f"expected a number > 0, got {value!r}")
    return float(value)


def _dtype(value: Any) -> str:
    text = str(value).lower().removeprefix("torch.")
    if text not in DTYPES:
        raise ValueError(f"unknown dtype {value!r}; use one of auto, float32, float16, bfloat16")
    return DTYPES[text]


def _quantization(value: Any) -> str | None:
    if value in (None, False, "none", "null", ""):
        return None
    text = str(value).lower()
    if text not in QUANTIZATIONS:
        raise ValueError(f"unknown quantization {value!r}; use 4bit, 8bit or null")
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
        raise ValueError(f"unknown device {value!r}; use auto, cpu, cuda, cuda:N, mps, balanced "
                         "(every GPU) or a list of cuda:N")
    return text


def _secret(value: Any) -> Secret:
    if isinstance(value, Secret):
        return value
    return Secret(_string(value))


def _headers(value: Any) -> dict[str, Secret]:
    if not isinstance(value, Mapping):
        raise ValueError(f"expected a mapping of header name to value, got {value!r}")
    return {str(name): _secret(text) for name, text in value.items()}


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
        raise ValueError(f"kind is a short name such as llm, tts or asr, got {value!r}")
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
            raise ConfigurationError(f"expected a mapping of options, got {data!r}", **where)
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in _CONVERTERS:
                close = difflib.get_close_matches(str(key), list(_CONVERTERS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(_CONVERTERS)}"
                raise ConfigurationError(f"unknown key {key!r}{hint}", key=str(key), **where)
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
                f"source {self.source!r} is neither an existing local folder nor a Hub id "
                "like 'org/name'", key="source", **where)
        local = self.source and self.backend == "transformers" and looks_like_path(self.source)
        if check_paths and local and not os.path.exists(expand_path(self.source or "")):
            raise ConfigurationError(
                f"local path {expand_path(self.source or '')!r} does not exist; check the path "
                "(relative paths start from the kernel's working directory)", key="source", **where)

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
            key = f"{self.backend}:{self.base_url.rstrip('/')}#{self.model or self.id}"
            credentials = [f"key={self.api_key.fingerprint}"] if self.api_key else []
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

    def to_mapping(self) -> dict[str, Any]:
        """The YAML entry for this spec: non-default fields, secrets as ``${ENV}`` only."""
        entry: dict[str, Any] = {}
        for spec_field in fields(self):
            name = spec_field.name
            if name in ("id", "builtin"):
                continue
            value = getattr(self, name)
            default = spec_field.default_factory() if callable(spec_field.default_factory) else spec_field.default
            if value == default and name != "backend":
                continue
            entry[name] = self._saved_value(name, value)
        return {k: v for k, v in entry.items() if v is not None or k in _NULLABLE}

    def _saved_value(self, name: str, value: Any) -> Any:
        if isinstance(value, Secret):
            if value.is_literal:
                log.warning("%s of model %r was given in clear and is not saved; "
                            "write it as ${ENV_VARIABLE} to keep it", name, self.id)
            return value.saved_form()
        if name in ("headers", "load_kwargs"):
            kept = {k: self._saved_value(f"{name}.{k}", v) for k, v in value.items()}
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


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "source": _string, "backend": _string, "revision": _optional(_string),
    "device": _device, "dtype": _dtype, "quantization": _quantization,
    "trust_remote_code": _boolean, "token": _optional(_secret), "tokenizer": _optional(_string),
    "max_context": _optional(_integer(1)), "required_memory": _size, "pinned": _boolean,
    "priority": _optional(_integer(-(10**9))), "protected": _optional(_boolean), "kind": _kind,
    "keep_alive": _keep_alive, "preload": _boolean,
    "generation": _generation, "load_kwargs": _load_kwargs,
    "base_url": _optional(_string), "model": _optional(_string), "api_key": _optional(_secret),
    "timeout": _optional(_number), "max_retries": _optional(_integer(0)), "headers": _headers,
    "options": _mapping, "builtin": _boolean,
}
_NULLABLE = {"quantization"}
