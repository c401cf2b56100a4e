"""Durations (``30m``) and sizes (``14GB``) as users write them, and back.

Parsing raises ``ValueError`` with the accepted forms; callers turn it into a
:class:`~jupyter_llm_manager.errors.ConfigurationError` that names the place.
"""

from __future__ import annotations

import math
import re
import reprlib

__all__ = ["MESSAGE_LIMIT", "NEVER", "brief", "displayable", "excerpt", "format_bytes", "format_duration", "parse_duration",
           "parse_size"]

#: A keep-alive that never expires.
NEVER = math.inf

_DURATION_UNITS = {"ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|s|m|h|d)", re.IGNORECASE)
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2,
    "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4,
}
_MAX_SIZE_TEXT = 64  # a size is a short text; longer input is cut before any message repeats it
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)


def _brief_repr() -> reprlib.Repr:
    shorter = reprlib.Repr()
    shorter.maxlevel, shorter.maxstring, shorter.maxother = 2, 60, 60
    shorter.maxlist = shorter.maxtuple = shorter.maxdict = shorter.maxset = 4
    return shorter


_BRIEF = _brief_repr()


def brief(value: object) -> str:
    """A short ``repr`` for messages: at most a few elements, two levels and ~60 characters per string.

    Its cost is bounded whatever the value, so a message never expands a
    huge or self-referencing structure (a YAML alias bomb).
    """
    return _BRIEF.repr(value)


#: The most characters a message shows: errors, events, status rows, the dashboard.
MESSAGE_LIMIT = 500


def excerpt(text: str, limit: int = MESSAGE_LIMIT) -> str:
    """``text`` when short, else its start and its end around ``…``: at most ``limit`` characters.

    The end is kept because messages put what to do last.
    """
    if len(text) <= limit:
        return text
    tail = min(limit // 4, 120)
    return text[:limit - tail - 3] + " … " + text[-tail:]


#: Terminal escape sequences (CSI, OSC up to BEL, ST or the end of the line: one left open never hides the
#: lines after it), two-character escapes, and other control characters.
_ESCAPES = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b\n]*(?:\x07|\x1b\\)?|\x1b[@-_]?|\x9b[0-?]*[ -/]*[@-~]"
                      r"|[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def displayable(text: str) -> str:
    """``text`` for a terminal or a plain-text output: no escape sequence (colours, titles, links), no control
    characters but newlines and tabs, no bidirectional override (a name written right to left would reorder
    what follows it on the line). Only where text is shown; answers keep every character."""
    if text.replace("\n", "").replace("\t", "").isprintable():  # the usual case, seen at once (a listing of
        return text  # 20,000 models is 2 MB); every escape sequence starts with a character that is not printable
    return _ESCAPES.sub("", text)


def parse_duration(value: str | float | None) -> float | None:
    """Seconds from ``90``, ``"90s"``, ``"30m"``, ``"1h30m"``, ``"never"``.

    ``None`` stays ``None`` (not set). ``"never"``, ``"forever"`` or a negative
    number give :data:`NEVER`. ``0`` means "as soon as idle".
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30m or 1h, got {brief(value)}")
    if isinstance(value, (int, float)):
        if math.isnan(value):
            raise ValueError("a duration cannot be NaN; write a time such as 30m, or 'never'")
        return NEVER if value < 0 else float(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a duration such as 30m or 1h, got {brief(value)}")
    text = value.strip().lower()
    if text in {"never", "forever", "inf", "infinite", "-1"}:
        return NEVER
    try:
        return parse_duration(float(text))
    except ValueError:
        pass
    position, total = 0, 0.0
    for match in _DURATION_PART.finditer(text):
        if text[position:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]
        position = match.end()
    if position == 0 or text[position:].strip():
        raise ValueError(
            f"expected a duration such as 90s, 30m, 1h30m or 'never', got {brief(value)}"
        )
    return total


def parse_size(value: str | float) -> int:
    """Bytes from ``1024``, ``"14GB"`` (decimal) or ``"16GiB"`` (binary)."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 14GB or 512MiB, got {brief(value)}")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:
            raise ValueError(f"a size must be a finite number of bytes >= 0, got {value!r}")
        return int(value)
    if not isinstance(value, str):
        raise ValueError(f"expected a size such as 14GB or 512MiB, got {brief(value)}")
    text = value[:_MAX_SIZE_TEXT]
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size such as 14GB, 512MiB or 1073741824, got {text!r}")
    size = float(match.group(1)) * _SIZE_UNITS[unit]
    if not math.isfinite(size):
        raise ValueError(f"{text!r} is too large to be a size")
    return int(size)


def format_bytes(value: float | None) -> str:
    """``13.2 GB``: decimal units, one decimal, as GPU dashboards show them."""
    if value is None:
        return "?"
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if abs(size) < 1000:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} TB"


def bytes_text(field: str, *, missing: str = "") -> property:
    """A read-only property showing the byte count in ``field`` as :func:`format_bytes` text.

    For the ``*_str`` companions of ``*_bytes`` fields in reports; ``missing`` where the count is None.
    """
    def text(self: object) -> str:
        value = getattr(self, field)
        return missing if value is None else format_bytes(value)

    return property(text, doc=f"``{field}`` as text, e.g. ``13.2 GB``.")


def format_duration(seconds: float | None) -> str:
    """``2m 05s`` for countdowns and ages; ``never`` for :data:`NEVER`."""
    if seconds is None:
        return ""
    if math.isinf(seconds):
        return "never"
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.0f}s" if seconds >= 10 else f"{seconds:.1f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"
