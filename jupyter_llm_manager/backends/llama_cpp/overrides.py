"""``kv_overrides``: the GGUF header fields a spec may override, an allow-list, each with its type and range.

llama.cpp reads an override wherever it reads the field, and many fields
reach its asserts: ``llama.attention.layer_norm_rms_epsilon: -1.0`` aborts
the whole process at load, and no general rule tells such a field from a
harmless one across architectures. So only fields known to be safe pass:
the tokenizer's special token ids (a token of the vocabulary: checked
against the file's at load), its ``add_*`` flags, and the descriptive
``general.*`` texts. Any other key is a one-line error naming the key and
what may be overridden (RoPE has options of its own: ``rope_freq_base``...).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ...support.units import brief

__all__ = ["FLAG_KEYS", "MAX_OVERRIDES", "MAX_TEXT", "TEXT_KEYS", "TOKEN_KEYS", "native_text", "override_problem",
           "token_problem"]

MAX_OVERRIDES = 256
MAX_TEXT = 127  # llama_model_kv_override keeps keys and strings in char[128]
_MAX_TOKEN = 2**31 - 1  # llama_token is an int32; the file's vocabulary bounds it at load

_TOKENS = ("bos", "eos", "eot", "eom", "unknown", "seperator", "padding", "cls", "mask", "prefix", "suffix",
           "middle", "fim_pre", "fim_suf", "fim_mid", "fim_pad", "fim_rep", "fim_sep")
#: Special token ids (llama.cpp spells ``seperator`` so): a whole number, a token of the vocabulary.
TOKEN_KEYS = frozenset(f"tokenizer.ggml.{name}_token_id" for name in _TOKENS)
#: The tokenizer's flags: true or false.
FLAG_KEYS = frozenset(f"tokenizer.ggml.{name}" for name in ("add_bos_token", "add_eos_token", "add_sep_token",
                                                             "add_space_prefix", "remove_extra_whitespaces"))
#: Descriptive texts nothing computes with.
TEXT_KEYS = frozenset(f"general.{name}" for name in ("name", "author", "version", "organization", "basename",
                                                      "finetune", "description", "license", "url"))
#: Header fields the estimate reads from the file: overriding them would load another shape than was counted.
_SHAPE_FIELDS = ("block_count", "embedding_length", "context_length", "vocab_size", "feed_forward_length",
                 "attention.head_count", "attention.head_count_kv", "attention.key_length",
                 "attention.value_length", "expert_count", "expert_used_count")
_ALLOWED = ("tokenizer.ggml.*_token_id (a token id), tokenizer.ggml.add_bos_token/add_eos_token/add_sep_token/"
            "add_space_prefix/remove_extra_whitespaces (true or false), general.name/author/version/description... "
            "(short text); RoPE: the options rope_freq_base, rope_freq_scale, yarn_*")


def override_problem(value: Any) -> str:
    """Why ``kv_overrides`` is refused ('' when every key is allowed and its value of the right type and range)."""
    if not isinstance(value, Mapping) or len(value) > MAX_OVERRIDES:
        return f"got {brief(value)}: give a mapping of at most {MAX_OVERRIDES} GGUF keys to values"
    for key, item in value.items():
        if not isinstance(key, str) or not native_text(key):
            return f"the key {brief(key)} is not a GGUF key (text of 1 to {MAX_TEXT} bytes)"
        problem = _item_problem(key, item)
        if problem:
            return problem
    return ""


def _item_problem(key: str, item: Any) -> str:
    if key.partition(".")[2] in _SHAPE_FIELDS:
        return (f"{key!r} is the model's shape, which the memory estimate reads from the file: "
                "convert the file instead")
    if key in TOKEN_KEYS:
        if isinstance(item, int) and not isinstance(item, bool) and 0 <= item <= _MAX_TOKEN:
            return ""
        return f"{key!r}: got {brief(item)}: give a token id (a whole number from 0, below the vocabulary's size)"
    if key in FLAG_KEYS:
        return "" if isinstance(item, bool) else f"{key!r}: got {brief(item)}: give true or false"
    if key in TEXT_KEYS:
        if isinstance(item, str) and native_text(item, empty=True):
            return ""
        return f"{key!r}: got {brief(item)}: give a text of at most {MAX_TEXT} bytes"
    return (f"{key!r} is not a header field the manager lets through (a wrong value there can abort llama.cpp); "
            f"allowed: {_ALLOWED}")


def token_problem(overrides: Mapping[str, Any], vocab_size: int) -> str:
    """Why a token id override is refused for a file of ``vocab_size`` tokens ('' when each is one of them)."""
    for key, item in overrides.items():
        if key in TOKEN_KEYS and vocab_size and item >= vocab_size:
            return f"{key!r}: got {item}, but this model's vocabulary has {vocab_size:,} tokens (0 to {vocab_size - 1:,})"
    return ""


def native_text(text: str, *, empty: bool = False) -> bool:
    """Whether ``text`` fits llama.cpp's char[128] (no NUL; empty only where ``empty``)."""
    raw = text.encode("utf-8", "replace")
    return (empty or bool(raw)) and len(raw) <= MAX_TEXT and b"\x00" not in raw
