"""What every HTML view shares: escaping, muted small print, how lines wrap, the warning colour."""

from __future__ import annotations

import html

__all__ = ["ID_WRAP", "MUTED", "SMALL", "WARNING", "WRAP", "attribute", "text"]

WRAP = "overflow-wrap: break-word"  # lines break between words; a word breaks only when it cannot fit alone
ID_WRAP = "overflow-wrap: anywhere"  # a long id (a Hub path) wraps rather than widening its column
MUTED = "color: var(--jp-ui-font-color2, #777)"
SMALL = f"{MUTED}; font-size:smaller"
WARNING = "#dc2626"


def text(value: str) -> str:
    """Escape for an HTML text node (quotes need no escaping there and stay readable)."""
    return html.escape(value, quote=False)


def attribute(value: str) -> str:
    """Escape for an HTML attribute in single or double quotes."""
    return html.escape(value, quote=True)
