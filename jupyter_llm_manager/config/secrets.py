"""Secrets: tokens, API keys and credentials in URLs, kept out of sight; and canonical keys.

A :class:`Secret` is an ``${ENV}`` reference (read when a model loads) or a
literal that is never shown, logged or saved. Credentials written into a
server URL (``http://user:key@host/v1``) are treated the same way.
:func:`canonical` turns an option value into one bounded, secret-free text,
which caches and instance keys are built from.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

__all__ = [
    "MAX_OPTION_VALUES",
    "Secret",
    "canonical",
    "expand_references",
    "has_credentials",
    "shown_url",
    "url_credentials",
    "url_without_literal_credentials",
]

ENV_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
ENV_IN_TEXT = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_FINGERPRINT_SALT = secrets.token_bytes(16)  # per process: fingerprints cannot be matched outside it


class Secret:
    """A token or API key: an ``${ENV}`` reference, or a literal kept out of sight.

    The value is read from the environment only by :meth:`resolve`, when a
    model loads. ``repr`` and ``str`` never show a literal value, and a literal
    is never written to a saved file.
    """

    __slots__ = ("_literal", "reference")

    def __init__(self, text: str) -> None:
        match = ENV_REFERENCE.match(text.strip())
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


def expand_references(text: str) -> str:
    """``text`` with each ``${NAME}`` replaced by that environment variable (left as written when unset)."""
    return ENV_IN_TEXT.sub(lambda match: os.environ.get(match.group(1), match.group(0)), text)


def has_credentials(url: str) -> bool:
    return "@" in urlsplit(url).netloc if "://" in url else False


def url_credentials(url: str) -> Secret | None:
    """The ``user:key`` part of a URL, as a secret."""
    netloc = urlsplit(url).netloc
    return Secret(netloc.rpartition("@")[0]) if "@" in netloc else None


def shown_url(url: str) -> str:
    """The URL as it may be shown, logged and keyed: credentials become ``***`` unless they are references."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    userinfo, _, host = parts.netloc.rpartition("@")
    shown = userinfo if ENV_IN_TEXT.fullmatch(userinfo) or only_references(userinfo) else "***"
    return urlunsplit(parts._replace(netloc=f"{shown}@{host}"))


def url_without_literal_credentials(url: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(netloc=parts.netloc.rpartition("@")[2]))


def only_references(userinfo: str) -> bool:
    return all(ENV_REFERENCE.match(part) for part in userinfo.split(":") if part)


#: The most values (mapping entries, list items, scalars) one option mapping may hold.
MAX_OPTION_VALUES = 10_000


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
            return repr(item.fingerprint)
        if item is None or isinstance(item, (bool, int, float, str)):
            return repr(item)  # exact and fast: a key is built for every spec
        if isinstance(item, Mapping):
            entries = sorted((str(key), walk(child)) for key, child in item.items())
            return "{" + ",".join(f"{key!r}:{text}" for key, text in entries) + "}"
        if isinstance(item, (set, frozenset)):
            return "{" + ",".join(sorted(walk(child) for child in item)) + "}"
        if isinstance(item, (list, tuple)):
            return "[" + ",".join(walk(child) for child in item) + "]"
        return repr(f"{type(item).__name__}:{item}"[:200])

    return walk(value)
