"""How a notebook is named where people read it: short, telling two apart, its full path kept for hover.

A manager publishes its notebook's path relative to the home folder, as
``~/work/report.ipynb`` (:func:`published_name`): that is the name in every
message. Where notebooks are listed (``%llm status --all``, ``ps``, the
dashboard, the JupyterLab panel), :func:`notebook_names` names each relative
to the Jupyter server's root where it is known (JupyterLab tells the kernel,
see :func:`server_root`), as JupyterLab's file browser does, else relative to
the home folder; so two notebooks that share a file name read with their
folders (``a/report.ipynb``, ``b/report.ipynb``). A relative path (what older
Jupyter servers tell a kernel) is already relative to the root. Names that
are not paths (a script's, ``pid 12``) stay as they are.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from .units import displayable

__all__ = ["NAME_LIMIT", "NotebookName", "notebook_names", "published_name", "server_root", "shown_name"]

#: The longest name (a notebook's, a model's) shown where notebooks are listed; longer ones are cut in the middle.
NAME_LIMIT = 200


@dataclass(frozen=True)
class NotebookName:
    """A notebook as shown (``shown``) and its full path (``full``: for hover)."""

    shown: str
    full: str


def shown_name(text: str, limit: int = NAME_LIMIT) -> str:
    """``text`` safe to show on one line of a table: escape sequences and control characters removed (a
    newline, a tab becomes a space), at most ``limit`` characters (the middle cut out, marked with ``…``)."""
    line = " ".join(displayable(text).split("\n")).replace("\t", " ")
    if len(line) <= limit:
        return line
    keep = limit - 1
    return line[:keep - keep // 3] + "…" + line[len(line) - keep // 3:]


def _home(home: str | None) -> str:
    return (home if home is not None else os.path.expanduser("~")).rstrip("/\\")


def _under(path: str, folder: str) -> str | None:
    """``path`` relative to ``folder`` when it lies inside it, else ``None``."""
    folder = folder.rstrip("/\\")
    if folder and path.startswith(folder) and path[len(folder):len(folder) + 1] in ("/", "\\"):
        return path[len(folder) + 1:]
    return None


def published_name(path: str, *, home: str | None = None) -> str:
    """A notebook's path as its manager publishes it: the home folder as ``~`` (``~/work/a.ipynb``)."""
    inside = _under(path, _home(home))
    return f"~/{inside}" if inside else path


def _full(name: str, root: str | None, home: str | None) -> str:
    """The path behind a published name: ``~`` expanded; a relative path (a notebook's) under the root."""
    if name.startswith("~/"):
        return _home(home) + name[1:]
    if root and ("/" in name or name.endswith(".ipynb")) and not os.path.isabs(name):
        return posixpath.join(root.replace("\\", "/"), name)
    return name


def notebook_names(names: Iterable[str], *, root: str | None = None,
                   home: str | None = None) -> dict[str, NotebookName]:
    """How each of ``names`` (published names) reads where notebooks are listed, and its full path.

    Relative to the server's ``root`` when given and the notebook lies inside it, else relative to the home
    folder (``~/...``); a relative path or a name that is no path stays as it is.
    """
    shown = {}
    for name in dict.fromkeys(names):
        full = _full(name, root, home)
        relative = _under(full, root) if root and os.path.isabs(full) else None
        shown[name] = NotebookName((relative or published_name(full, home=home)).replace("\\", "/"), full)
    return shown


def server_root(session_path: str, notebook_path: str) -> str | None:
    """The Jupyter server's root folder, from a kernel's notebook path (absolute, ``JPY_SESSION_NAME``) and the
    same notebook's path as JupyterLab names it (relative to the root); ``None`` when they do not match."""
    session, relative = session_path.replace("\\", "/"), notebook_path.replace("\\", "/").strip("/")
    if not relative or not posixpath.isabs(session) or not session.endswith("/" + relative):
        return None
    return session[: -len(relative) - 1] or "/"
