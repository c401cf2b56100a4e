"""How a notebook is named where people read it: short, telling two apart, its full path kept for hover.

A manager publishes its notebook's path relative to the home folder, as
``~/work/report.ipynb`` (:func:`published_name`). A message names a notebook
relative to the Jupyter server's root once this process knows it
(:func:`message_name`), else as published; a footer names the copy it ran on
by its file name where no root is known (:func:`footer_names`), with its
folders where two share one. Where notebooks are listed (``%llm status --all``, ``ps``, the
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
import threading
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from .units import displayable

__all__ = ["NAME_LIMIT", "NotebookName", "footer_names", "known_server_root", "message_name", "notebook_names",
           "published_name", "remember_server_root", "server_root", "shown_name"]

#: The longest name (a notebook's, a model's) shown where notebooks are listed; longer ones are cut in the middle.
NAME_LIMIT = 200


_root: str | None = None  # the Jupyter server's root folder, once JupyterLab told this kernel (the lab bridge)
_root_lock = threading.Lock()


def remember_server_root(root: str | None) -> None:
    """The Jupyter server's root folder, as JupyterLab's panel told it: notebooks are named relative to it."""
    global _root
    if root:
        with _root_lock:
            _root = root


def known_server_root() -> str | None:
    """The Jupyter server's root folder where a JupyterLab panel said it, else ``None``."""
    with _root_lock:
        return _root


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


def message_name(name: str) -> str:
    """A member's published name as a message says it: relative to the server's root where this process knows it
    (``proj/analysis.ipynb``), else as published (``~/work/proj/analysis.ipynb``); a name that is no path as is."""
    return notebook_names([name], root=known_server_root())[name].shown


def footer_names(names: Mapping[str, str]) -> dict[str, str]:
    """Short names for members (``member -> published name``) in a footer: relative to the server's root where
    it is known, else the file name (``analysis.ipynb``); where two would read alike, as :func:`message_name`
    says them (with their folders)."""
    root = known_server_root()
    shown = {}
    for member, name in names.items():
        relative = message_name(name)
        inside_root = root is not None and not relative.startswith("~/") and not posixpath.isabs(relative)
        shown[member] = relative if inside_root else relative.replace("\\", "/").rstrip("/").rpartition("/")[2]
    counts: dict[str, int] = {}
    for short in shown.values():
        counts[short] = counts.get(short, 0) + 1
    return {member: message_name(names[member]) if counts[short] > 1 else short for member, short in shown.items()}
