"""The types of the ``adapter_config.json`` fields PEFT reads when it builds a LoRA model.

PEFT trusts the file: ``"target_modules": 5`` or ``"layers_to_transform": "x"``
passed registration and failed at load with the raw ``TypeError`` of PEFT's
insides. :func:`check_field_types` says at registration, in one line, which
field has which wrong type. Only fields PEFT reads while loading are checked;
a field missing or ``null`` where PEFT allows it passes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..support.units import excerpt

__all__ = ["check_field_types", "shown"]

_CONFIG = "adapter_config.json"


def shown(value: Any) -> str:
    """A config value as a message shows it: its ``repr``, cut short (a value nested too deeply: its type)."""
    try:
        return excerpt(repr(value), 60)
    except (RecursionError, ValueError):  # ValueError: an integer past Python's 4,300 digits
        return f"a {type(value).__name__}"


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


def _wholes(value: Any) -> bool:
    return isinstance(value, list) and all(_whole(item) for item in value)


def _flag(value: Any) -> bool:
    return isinstance(value, bool)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _token_indices(value: Any) -> bool:
    return _wholes(value) or (isinstance(value, dict) and all(_text(key) and _wholes(indices)
                                                              for key, indices in value.items()))


def _replication(value: Any) -> bool:
    return isinstance(value, list) and all(_wholes(pair) and len(pair) == 2 for pair in value)


#: Field → (what it may be, said in a message; the test), ``null`` allowed for all but the flags and numbers.
_FIELDS: dict[str, tuple[str, Callable[[Any], bool], bool]] = {
    "target_modules": ("a module name or a list of them", lambda v: _text(v) or _texts(v), True),
    "exclude_modules": ("a module name or a list of them", lambda v: _text(v) or _texts(v), True),
    "modules_to_save": ("a list of module names", _texts, True),
    "layers_to_transform": ("a layer index or a list of them", lambda v: _whole(v) or _wholes(v), True),
    "layers_pattern": ("a name or a list of names", lambda v: _text(v) or _texts(v), True),
    "target_parameters": ("a list of parameter names", _texts, True),
    "trainable_token_indices": ("a list of token ids or a mapping of module names to them", _token_indices, True),
    "layer_replication": ("a list of [start, end] layer pairs", _replication, True),
    "alora_invocation_tokens": ("a list of token ids", _wholes, True),
    "base_model_name_or_path": ("a model name or path", _text, True),
    "task_type": ("a task name", _text, True),
    "peft_type": ("an adapter type", _text, True),
    "bias": ("'none', 'all' or 'lora_only'", lambda v: v in ("none", "all", "lora_only"), False),
    "lora_dropout": ("a number", _number, False),
    "init_lora_weights": ("true, false or a method name", lambda v: _flag(v) or _text(v), False),
    **{name: ("true or false", _flag, False)
       for name in ("use_dora", "use_rslora", "fan_in_fan_out", "inference_mode", "lora_bias", "use_qalora")},
}


def check_field_types(config: dict[str, Any]) -> None:
    """A one-line ``ValueError`` naming the first field PEFT reads whose value has a type PEFT cannot use."""
    for name, (wanted, fits, nullable) in _FIELDS.items():
        if name not in config or (nullable and config[name] is None):
            continue
        if not fits(config[name]):
            raise ValueError(f"{_CONFIG}: {name} is {shown(config[name])}, not {wanted}")
