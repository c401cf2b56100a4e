"""The values a spec may hold: each key's converter (checks and normalizes), and the names they accept.

``fp16`` → ``float16``, ``"30m"`` → 1800.0, ``"14GB"`` → bytes; a wrong value
is a ``ValueError`` saying what is expected (never showing a secret). Split
from :mod:`.spec` so the spec's module holds the spec itself.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, Literal

from ..errors import ConfigurationError, InvalidGenerationParameters
from ..generation import GenerationParams
from ..support.units import brief, parse_duration, parse_size
from .secrets import Secret, canonical, expand_references, has_credentials
from .settings import check_max_context_auto_limit

__all__ = ["CONVERTERS", "DTYPES", "INHERITED", "KIND_PRIORITY", "LOCAL_BACKENDS", "NULLABLE", "PROTECTED_KINDS", "QUANTIZATIONS",
           "check_model_id", "expand_path", "looks_like_path"]

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
LOCAL_BACKENDS = ("transformers", "llama_cpp")
#: Priority tiers: the default priority of each kind of model; ``asr`` is also protected.
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


#: A Hugging Face Hub repository id: ``org/name``, each part letters, digits, ``_ . -``, not starting with ``.``/``-``.
_HUB_ID = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9_][A-Za-z0-9_.-]{0,95}")


def adapter_is_local(adapter: str) -> bool:
    """Whether an ``adapter`` value names a local path rather than a Hub id.

    A value is a local path when it starts with ``.``, ``/`` or ``~`` (or a
    drive), exists, has one part or more than two, ends in ``.gguf``, or its
    first part is an existing local folder; only ``org/name`` (a valid Hub
    repository id) is read as a Hub id. So a mistyped path is reported as a
    missing path at once, never looked up on the Hub.
    """
    text = expand_path(adapter)
    if looks_like_path(text) or text.startswith(".") or text.lower().endswith(".gguf"):
        return True
    parts = re.split(r"[\\/]", text)
    if len(parts) != 2 or os.path.isdir(parts[0]):
        return True
    return not _HUB_ID.fullmatch(text) or ".." in text or "--" in text or text.endswith((".", "-"))


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


def _context(value: Any) -> int | Literal["auto"]:
    """A context length in tokens, or ``auto`` (llama_cpp: the largest that fits the budget)."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    if isinstance(value, str) and value.strip().isdigit():  # from a magic's command line
        value = int(value)
    return _integer(1)(value)


def _gguf_name(value: Any) -> str:
    name = _string(value)
    if not name.lower().endswith(".gguf") or "/" in name or "\\" in name:
        raise ValueError(f"gguf_file is the name of a .gguf file in the source folder or repo, got {brief(value)}")
    return name


def _mode(value: Any) -> Literal["chat", "embed"]:
    text = _string(value).lower()
    if text == "chat":
        return "chat"
    if text == "embed":
        return "embed"
    raise ValueError(f"mode is chat (generate and stream) or embed (vectors), got {brief(value)}")


def _kind(value: Any) -> str:
    text = _string(value).lower()
    if not _KINDS.match(text):
        raise ValueError(f"kind is a short name such as llm, tts or asr, got {brief(value)}")
    return text


def _keep_alive(value: Any) -> float | None:
    return parse_duration(value)


def _callable_path(value: Any) -> str:
    """``package.module:function``: an importable callable, imported when the model loads."""
    text = _string(value)
    if not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", text):
        raise ValueError(f"expected package.module:function, got {brief(value)}")
    return text


def _about(value: Any) -> dict[str, Any]:
    """Keys that only describe a model (speed, description, fps): text, numbers, flags, short lists."""
    mapping = _mapping(value)
    simple = (str, int, float, bool, type(None))
    for key, item in mapping.items():
        if not (isinstance(item, simple) or (isinstance(item, list) and all(isinstance(i, simple) for i in item))):
            raise ValueError(f"{key!r} must be text, a number, true/false or a list of those, got {brief(item)}")
    return mapping


def _base_id(value: Any) -> str:
    """The model id an adapter runs on."""
    return check_model_id(_string(value))


def _adapter(value: Any) -> str:
    """A PEFT adapter folder or Hub id, or a GGUF LoRA file (llama_cpp)."""
    text = _string(value)
    if "\n" in text or "\x00" in text:
        raise ValueError(f"adapter is a folder, a Hub id or a .gguf file, got {brief(value)}")
    return text


def _size(value: Any) -> int | None:
    return None if value is None else parse_size(value)


CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "source": _string, "backend": _string, "revision": _optional(_string),
    "device": _device, "dtype": _dtype, "quantization": _quantization,
    "trust_remote_code": _boolean, "token": _optional(_secret), "tokenizer": _optional(_string),
    "max_context": _optional(_context), "max_context_auto_limit": _optional(check_max_context_auto_limit),
    "gguf_file": _optional(_gguf_name), "mode": _mode,
    "required_memory": _size, "pinned": _boolean,
    "priority": _optional(_integer(-(10**9))), "protected": _optional(_boolean), "kind": _kind,
    "keep_alive": _keep_alive, "preload": _boolean,
    "generation": _generation, "load_kwargs": _load_kwargs,
    "base_url": _optional(_url), "model": _optional(_string), "api_key": _optional(_secret),
    "timeout": _optional(_number), "max_retries": _optional(_integer(0)), "headers": _headers,
    "options": _mapping, "builtin": _boolean, "loader": _optional(_callable_path),
    "unloader": _optional(_callable_path), "task": _optional(_string), "about": _about,
    "base": _optional(_base_id), "adapter": _optional(_adapter),
}
#: What an adapter takes from its base: how the weights are loaded. Written once, on the base.
INHERITED = ("source", "backend", "revision", "device", "dtype", "quantization", "trust_remote_code", "token",
             "tokenizer", "max_context", "max_context_auto_limit", "gguf_file", "mode", "load_kwargs", "options")
NULLABLE = {"quantization"}
