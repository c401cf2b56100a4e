"""Put values from the notebook into a prompt, without ever breaking code or JSON.

The rule, in order:

1. ``{{text}}`` (no braces inside) is the literal ``{text}``, never interpolated.
2. ``{name}``, ``{name.attr}``, ``{name[0]}``, ``{name['key']}``, ``{name[key]}``,
   ``{name[-3:]}``, optionally with ``!r``/``!s`` and a format spec without spaces
   (``{x:.2f}``), is replaced by the value when ``name`` is a variable of the
   user namespace (``In``, ``Out`` and ``_`` included) and the lookup works.
3. Everything else is left exactly as written: code, JSON, dict and set
   literals, unknown names, lookups that fail.
4. The one error: a format spec asking for a width or precision above
   :data:`MAX_FORMAT_WIDTH` (``{x:>200000000}`` would build a 200 MB prompt).

No ``eval``: attributes and indexes are looked up one by one.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ...errors import InvalidGenerationParameters

__all__ = ["MAX_FORMAT_WIDTH", "interpolate"]

#: The largest width or precision a ``{name:spec}`` field may ask for.
MAX_FORMAT_WIDTH = 10_000

_ESCAPED = re.compile(r"\{\{([^{}]*)\}\}")
_FIELD = re.compile(r"\{([^{}]*)\}")
_SPEC = re.compile(
    r"^(?P<name>[A-Za-z_]\w*)(?P<path>(?:\.[A-Za-z_]\w*|\[[^\[\]]*\])*)(?:!(?P<conversion>[rsa]))?"
    r"(?::(?P<format>[^\s{}]*))?$"
)
_STEP = re.compile(r"\.([A-Za-z_]\w*)|\[([^\[\]]*)\]")
_INDEX = re.compile(r"^-?\d+$")
_SLICE = re.compile(r"^(-?\d*):(-?\d*)(?::(-?\d*))?$")
_MISSING = object()


def interpolate(template: str, namespace: Mapping[str, Any]) -> str:
    """``template`` with known fields replaced by values from ``namespace`` (see the module rule)."""
    pieces, position = [], 0
    for match in re.finditer(r"\{\{[^{}]*\}\}|\{[^{}]*\}", template):
        pieces.append(template[position:match.start()])
        text = match.group(0)
        escaped = _ESCAPED.fullmatch(text)
        if escaped:
            pieces.append("{" + escaped.group(1) + "}")
        else:
            value = _field_value(text[1:-1], namespace)
            pieces.append(text if value is _MISSING else value)
        position = match.end()
    pieces.append(template[position:])
    return "".join(pieces)


def _field_value(field: str, namespace: Mapping[str, Any]) -> Any:
    spec = _SPEC.match(field)
    if spec is None or spec.group("name") not in namespace:
        return _MISSING
    _check_widths(field, spec.group("format") or "")
    value = namespace[spec.group("name")]
    for attribute, index in _STEP.findall(spec.group("path") or ""):
        value = _step(value, attribute, index)
        if value is _MISSING:
            return _MISSING
    try:
        if spec.group("conversion") == "r":
            value = repr(value)
        elif spec.group("conversion") == "a":
            value = ascii(value)
        return format(value, spec.group("format") or "")
    except Exception:  # noqa: BLE001 - user objects' __format__/__repr__ may raise anything: left as written
        return _MISSING


def _check_widths(field: str, format_spec: str) -> None:
    for digits in re.findall(r"\d+", format_spec):
        if len(digits) > len(str(MAX_FORMAT_WIDTH)) or int(digits) > MAX_FORMAT_WIDTH:
            shown = field if len(field) <= 40 else field[:37] + "..."
            raise InvalidGenerationParameters(
                f"{{{shown}}} asks for a width or precision of {digits[:12]}{'...' if len(digits) > 12 else ''}; "
                f"in a prompt they are limited to {MAX_FORMAT_WIDTH:,}")


def _step(value: Any, attribute: str, index: str) -> Any:
    try:
        if attribute:
            return getattr(value, attribute) if not attribute.startswith("__") else _MISSING
        return value[_key(index.strip())]
    except Exception:  # noqa: BLE001 - a user object's lookup may raise anything: then it is not a field
        return _MISSING


def _key(text: str) -> Any:
    if _INDEX.match(text):
        return int(text)
    sliced = _SLICE.match(text)
    if sliced:
        return slice(*(int(part) if part not in ("", None) else None for part in sliced.groups()))
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text
