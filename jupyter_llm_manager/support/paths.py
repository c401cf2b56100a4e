"""Where the package keeps things on disk: its cache folder (demo models, converted copies)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["cache_folder"]


def cache_folder() -> Path:
    """``~/.cache/jupyter_llm_manager`` (or under ``$XDG_CACHE_HOME``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "jupyter_llm_manager"
