"""Every llama.cpp option a spec may set in ``load_kwargs``: an allow-list, each with its type and range.

A value that reaches llama.cpp's native code unchecked can abort the whole
process (``type_k: 999`` fails a ``GGML_ASSERT``), so an option is accepted
only when this module knows it and the value has the type and range llama.cpp
takes; anything else is a one-line :class:`ConfigurationError` at register
time. (The options the manager owns, the threads and the batch sizes are
checked in :mod:`.options`; ``kv_overrides`` in :mod:`.overrides`.)

Enum options (``rope_scaling_type``, ``attention_type``, ``numa``) are taken
by name or value and given to llama-cpp-python as the installed library's
values; RoPE and YaRN numbers are finite and within what models use.

KV cache types are taken by name as llama.cpp's server takes them
(``type_k: q8_0``) or by their ggml value, among the types the server offers
for a cache that the installed llama-cpp-python exposes. At load,
:func:`native_options` turns names into values, checks that each type's block
divides the model's head size, and turns flash attention on where a
quantized ``type_v`` needs it.
"""

from __future__ import annotations

import difflib
import importlib.util
import math
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from ...config.secrets import Secret
from ...config.spec import ModelSpec
from ...errors import ConfigurationError
from ...gguf.files import CACHE_TYPES
from ...support.units import brief
from .overrides import override_problem, token_problem

if TYPE_CHECKING:
    from ...gguf.files import GgufInfo

__all__ = ["ALLOWED", "CACHE_TYPES", "cache_type_name", "cache_type_of", "cache_type_value", "cache_types",
           "check_load_kwargs", "native_options"]

_FLOATS = {"f32", "f16", "bf16"}  # the cache types a V cache may have without flash attention
_UINT32 = 2**32 - 1
_MAX_TOKENS = 1 << 21  # as options.MAX_CONTEXT_TOKENS
_CHECKED_ELSEWHERE = frozenset({"n_ctx", "n_threads", "n_threads_batch", "n_batch", "n_ubatch"})  # see options.py
_REFUSED = {
    "vocab_only": "the manager loads the whole model to run it",
    "split_mode": "the device is the manager's placement: write device: cuda:N",
    "kwargs": "give each option by its name",
    "logits_all": "the manager returns text; it would keep every token's logits (context × vocabulary floats) "
                  "beside the counted memory",
}

Check = Callable[[Any], str]  # why a value is wrong ('' when it is right)


def cache_types() -> dict[str, int]:
    """The KV cache types offered here: the server's list, as the installed llama-cpp-python exposes them."""
    if importlib.util.find_spec("llama_cpp") is None:
        return dict(CACHE_TYPES)
    import llama_cpp

    return {name: value for name, value in CACHE_TYPES.items()
            if getattr(llama_cpp, f"GGML_TYPE_{name.upper()}", None) == value}


def cache_type_value(value: Any) -> int | None:
    """The ggml value of a cache type given by name (``"q8_0"``, any case) or by value; ``None`` if not offered."""
    offered = cache_types()
    if isinstance(value, str):
        return offered.get(value.strip().lower())
    if isinstance(value, int) and not isinstance(value, bool) and value in offered.values():
        return value
    return None


def _cache_type(value: Any) -> str:
    if cache_type_value(value) is not None:
        return ""
    names = ", ".join(cache_types())
    return f"got {brief(value)}: give a KV cache type by name ({names}) or by its ggml value"


def _boolean(value: Any) -> str:
    return "" if isinstance(value, bool) else f"got {brief(value)}: give true or false"


def _optional_boolean(value: Any) -> str:
    return "" if value is None else _boolean(value)


def _whole(low: int, high: int) -> Check:
    def check(value: Any) -> str:
        if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
            return ""
        return f"got {brief(value)}: give a whole number from {low:,} to {high:,}"
    return check


def _number(low: float, high: float, *, above: bool = False, unset: float | None = None) -> Check:
    """A finite number from ``low`` (or ``above`` it) to ``high``; ``unset`` (llama.cpp's "the file's") too."""
    def check(value: Any) -> str:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and (
                value == unset or ((value > low if above else value >= low) and value <= high)):
            return ""
        left = f"{'above' if above else 'from'} {low:g} {'and at most' if above else 'to'} {high:g}"
        return f"got {brief(value)}: give a number {left}" + (f", or {unset:g} (the file's)" if unset is not None else "")
    return check


def _choice(prefix: str, fallback: dict[str, int]) -> Check:
    """One of llama.cpp's enum values, by value or by name (``yarn``), as the installed library defines them."""
    def check(value: Any) -> str:
        if _enum_value(prefix, fallback, value) is not None:
            return ""
        return f"got {brief(value)}: give one of {', '.join(_enum(prefix, fallback))} (or its value)"
    return check


def _enum_value(prefix: str, fallback: dict[str, int], value: Any) -> int | None:
    """The value of an enum given by name (any case) or by value; ``None`` if the installed library has none such."""
    choices = _enum(prefix, fallback)
    if isinstance(value, str):
        return choices.get(value.strip().lower())
    if isinstance(value, int) and not isinstance(value, bool) and value in choices.values():
        return value
    return None


def _enum(prefix: str, fallback: dict[str, int]) -> dict[str, int]:
    if importlib.util.find_spec("llama_cpp") is None:
        return fallback
    import llama_cpp

    found = {name[len(prefix):].lower(): value for name, value in vars(llama_cpp).items()
             if name.startswith(prefix) and isinstance(value, int) and not name.endswith(("_COUNT", "_MAX_VALUE"))}
    return found or fallback


#: The options llama-cpp-python takes as C enums: a name is turned into the installed library's value at load.
_ENUMS = {"rope_scaling_type": ("LLAMA_ROPE_SCALING_TYPE_", {"unspecified": -1, "none": 0, "linear": 1, "yarn": 2,
                                                             "longrope": 3}),
          "attention_type": ("LLAMA_ATTENTION_TYPE_", {"unspecified": -1, "causal": 0, "non_causal": 1}),
          "numa": ("GGML_NUMA_STRATEGY_", {"disabled": 0, "distribute": 1, "isolate": 2, "numactl": 3, "mirror": 4})}


def _numa(value: Any) -> str:
    return "" if isinstance(value, bool) else _choice(*_ENUMS["numa"])(value)


def _text(value: Any) -> str:
    return "" if isinstance(value, str) and 0 < len(value) <= 64 else f"got {brief(value)}: give a short name"


def _callable(value: Any) -> str:
    return "" if callable(value) else f"got {brief(value)}: give a chat handler (a callable)"


def _instance(module: str, name: str) -> Check:
    def check(value: Any) -> str:
        if importlib.util.find_spec("llama_cpp") is not None:
            kind = getattr(importlib.import_module(module), name)
            if isinstance(value, kind):
                return ""
        return f"got {brief(value)}: give a {module}.{name}"
    return check


#: Every option of ``llama_cpp.Llama`` a spec may set, and the check of its value.
ALLOWED: dict[str, Check] = {
    "use_mmap": _boolean, "use_mlock": _boolean, "kv_overrides": override_problem,
    "seed": _whole(-1, _UINT32),
    "rope_scaling_type": _choice(*_ENUMS["rope_scaling_type"]), "attention_type": _choice(*_ENUMS["attention_type"]),
    # RoPE: 0 (or a negative yarn_ext_factor) is the file's value; anything else within what models use
    "rope_freq_base": _number(1, 1e9, unset=0), "rope_freq_scale": _number(1e-4, 100, unset=0),
    "yarn_ext_factor": _number(0, 16, unset=-1), "yarn_attn_factor": _number(0, 16, above=True),
    "yarn_beta_fast": _number(0, 1024), "yarn_beta_slow": _number(0, 1024), "yarn_orig_ctx": _whole(0, _MAX_TOKENS),
    "offload_kqv": _boolean, "flash_attn": _boolean,
    "op_offload": _optional_boolean, "swa_full": _optional_boolean, "no_perf": _boolean,
    "last_n_tokens_size": _whole(0, _MAX_TOKENS), "numa": _numa, "chat_format": _text,
    "chat_handler": _callable, "draft_model": _instance("llama_cpp.llama_speculative", "LlamaDraftModel"),
    "tokenizer": _instance("llama_cpp.llama_tokenizer", "BaseLlamaTokenizer"),
    "type_k": _cache_type, "type_v": _cache_type, "spm_infill": _boolean,
}


def check_load_kwargs(spec: ModelSpec, options: Mapping[str, Any] | None = None) -> None:
    """A one-line :class:`ConfigurationError` for the first option that is unknown or out of range.

    A secret (``${VAR}``) is checked once resolved, at load (:func:`native_options`).
    """
    for key, value in (spec.load_kwargs if options is None else options).items():
        if key in _CHECKED_ELSEWHERE:
            continue
        if key in _REFUSED:
            raise _refused(spec, key, _REFUSED[key])
        check = ALLOWED.get(str(key))
        if check is None:
            close = difflib.get_close_matches(str(key), ALLOWED, n=2)
            hint = f"did you mean {' or '.join(close)}? " if close else ""
            raise _refused(spec, str(key), f"not an option of llama.cpp this manager passes on; {hint}options: "
                                           "see llama_cpp.Llama")
        problem = "" if isinstance(value, Secret) and options is None else check(value)
        if problem:
            raise _refused(spec, key, problem)
    if spec.load_kwargs.get("flash_attn") is False and _quantized(spec.load_kwargs.get("type_v")):
        raise _refused(spec, "flash_attn", f"a quantized type_v ({spec.load_kwargs['type_v']}) needs flash "
                                           "attention: leave flash_attn out (the manager turns it on) or use "
                                           "type_v: f16")


def _quantized(value: Any) -> bool:
    found = cache_type_value(value) if value is not None else None
    return found is not None and found not in (CACHE_TYPES[name] for name in _FLOATS)


def cache_type_of(options: Mapping[str, Any], key: str) -> int:
    """The ggml value of ``options[key]`` (``type_k``/``type_v``); f16, llama.cpp's default, when unset."""
    value = options.get(key)
    found = cache_type_value(value) if value is not None else CACHE_TYPES["f16"]
    return CACHE_TYPES["f16"] if found is None else found


def cache_type_name(value: int) -> str:
    """``q8_0`` for 8: the server's name of a cache type's ggml value."""
    return next((name for name, known in CACHE_TYPES.items() if known == value), str(value))


def native_options(spec: ModelSpec, options: Mapping[str, Any], info: GgufInfo) -> dict[str, Any]:
    """``options`` (secrets resolved) checked again and as llama-cpp-python takes them.

    Enum options given by name (``rope_scaling_type: yarn``, ``numa: distribute``) become the installed
    library's values; cache types become their ggml values, each checked to divide the model's head size
    in whole blocks (llama.cpp aborts otherwise); a quantized ``type_v`` turns flash attention on, which
    llama.cpp needs for it; a token id override must be a token of the file's vocabulary.
    """
    resolved = {key: value.resolve() if isinstance(value, Secret) else value for key, value in options.items()}
    check_load_kwargs(spec, resolved)
    for key, (prefix, fallback) in _ENUMS.items():
        if key in resolved and not isinstance(resolved[key], bool):
            resolved[key] = _enum_value(prefix, fallback, resolved[key])
    for key in ("type_k", "type_v"):
        if key in resolved:
            value = resolved[key] = cache_type_of(resolved, key)
            _check_blocks(spec, key, value, info.head_dim)
    if _quantized(resolved.get("type_v")):
        resolved["flash_attn"] = True
    overrides = resolved.get("kv_overrides")
    problem = token_problem(overrides, info.vocab_size) if isinstance(overrides, Mapping) else ""
    if problem:
        raise _refused(spec, "kv_overrides", problem)
    return resolved


def _check_blocks(spec: ModelSpec, key: str, value: int, head_size: int) -> None:
    from ...gguf.header import block_size

    block = block_size(value)
    if head_size and head_size % block:
        raise _refused(spec, key, f"{cache_type_name(value)} stores blocks of {block} values, which do not divide this model's head "
                                  f"size ({head_size}): use f16 or q8_0 on another model")


def _refused(spec: ModelSpec, key: str, why: str) -> ConfigurationError:
    return ConfigurationError(f"load_kwargs.{key}: {why}", model_id=spec.id, key=f"load_kwargs.{key}")
