"""The YAML registry file: where it is, what it says, and saving it safely.

One file, found in this order: an explicit path, ``$JUPYTER_LLM_MANAGER_CONFIG``,
``~/.jupyter/llm_manager.yaml``. Three layouts are read: ours (see the README)
and the two that older in-house managers write, so their files work
unchanged.

Saving keeps what others wrote: under a lock file, the file is read once it
can be believed (:mod:`.reading`: an editor may be rewriting it in place),
this process's changes are merged into it, keeping the user's comments and
order (:mod:`.merging`), and the new version is written to a temporary file
and put in place only if, at the moment of the replace, the file still holds
the content that was merged (its SHA-256) and no other program has it open
for writing (:mod:`.replacing`); otherwise the merge starts again from the
new version, so an edit that arrives while a save works is merged, never lost.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import tempfile
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import ConfigurationError
from .layouts import ConfigFile, parse_document
from .merging import Changes, merged_text
from .reading import MAX_WAIT_S, Reading, Snapshot, read_settled, reading_of, remember_written, snapshot
from .replacing import replace_if_holding, wait_for_writers
from .spec import ModelSpec, expand_path

__all__ = [
    "CONFIG_ENV",
    "ConfigFile",
    "default_config_path",
    "find_config_path",
    "load_config",
    "save_config",
]

log = logging.getLogger(__name__)

CONFIG_ENV = "JUPYTER_LLM_MANAGER_CONFIG"
_LOCK_TIMEOUT_S = 10.0
_MAX_MERGES = 20  # a file that changes under every save this often is being rewritten continuously


def default_config_path() -> Path:
    """``~/.jupyter/llm_manager.yaml`` (or under ``$JUPYTER_CONFIG_DIR``)."""
    folder = os.environ.get("JUPYTER_CONFIG_DIR") or "~/.jupyter"
    return Path(os.path.expanduser(folder)) / "llm_manager.yaml"


def find_config_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """The file to read: explicit path, then the environment variable, then the default.

    An explicit or environment path is returned even if missing (loading it
    then says so); the default path only when it exists.
    """
    if explicit is not None:
        return Path(expand_path(os.fspath(explicit)))
    if os.environ.get(CONFIG_ENV):
        return Path(expand_path(os.environ[CONFIG_ENV]))
    default = default_config_path()
    return default if default.exists() else None


def load_config(path: str | os.PathLike) -> ConfigFile:
    """Read and validate a configuration file in any of the layouts :mod:`.layouts` reads.

    A file that does not exist yet is an empty registry: the first save creates it (and its folders).
    An empty or unparsable file is read again for a moment before it is believed (:mod:`.reading`).
    """
    path = Path(path)
    if not path.exists():
        return ConfigFile(path=path)
    return parse_document(read_settled(path, wait_if_recent=False).data, path)


# -- saving -------------------------------------------------------------------

def save_config(
    path: str | os.PathLike,
    models: Mapping[str, ModelSpec],
    aliases: Mapping[str, str],
    *,
    removed: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    tasks: Mapping[str, Mapping[str, Any]] | None = None,
    inference: Mapping[str, Any] | None = None,
) -> Path:
    """Merge ``models`` and ``aliases`` into the file and write it atomically.

    Under the lock, the file is read again so registrations saved by another
    kernel meanwhile are kept (no lost update); ids in ``removed`` (and only
    they) are dropped. ``defaults`` (every setting's saved form) replace the
    file's settings; ``tasks`` (name → its saved form) replace those tasks,
    ``inference`` the block of a task layout. Comments, order and quoting
    of what is kept stay as written. A file in another layout is converted
    to ours once, with a ``.bak`` copy of the original.
    """
    path = Path(expand_path(os.fspath(path)))
    changes = Changes(dict(models), dict(aliases), frozenset(removed), defaults, tasks, inference)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            _merge_and_write(path, changes)
    except Timeout:
        raise ConfigurationError(f"another process has held the lock {path}.lock for "
                                 f"{_LOCK_TIMEOUT_S:.0f} s; try again", path=str(path)) from None
    except PermissionError as error:
        raise ConfigurationError(f"cannot write the file ({error.strerror}); choose a writable "
                                 "config_path", path=str(path)) from None
    except OSError as error:
        raise ConfigurationError(f"cannot write the file: {error}", path=str(path)) from None
    return path


def _merge_and_write(path: Path, changes: Changes) -> None:
    """Read, merge, write; again from the new version whenever the file changed before (or during) the rename."""
    deadline = time.monotonic() + MAX_WAIT_S  # for the whole save: a file rewritten continuously stops the waits
    base: Reading | None = None  # what the next merge starts from
    expected = Snapshot(None, None, "")  # what the file must hold to be replaced
    for _ in range(_MAX_MERGES):
        if base is None:
            if not wait_for_writers(path, deadline):
                raise ConfigurationError(f"another program kept the file open for writing for {MAX_WAIT_S:.0f} s "
                                         "(an editor saving it?); nothing was written: try again once it is saved",
                                         path=str(path))
            base = read_settled(path, deadline=deadline)
            expected = base.snapshot
        text = merged_text(path, base.text, base.data, changes)
        outcome = _replace_if_unchanged(path, text, expected, deadline)
        if outcome is True:
            return
        if outcome is False:
            base = None
            log.info("%s changed while it was being saved; merging again with the new version", path)
            continue
        base, expected = outcome  # an edit that went to the replaced file: merged again, over what was written
    raise ConfigurationError(f"the file changed {_MAX_MERGES} times while it was being saved; something rewrites "
                             "it continuously: stop it, then save again", path=str(path))


def _replace_if_unchanged(path: Path, text: str, read: Snapshot, deadline: float) -> bool | tuple[Reading, Snapshot]:
    """Write ``text`` to a temporary file beside ``path`` and put it in place, if ``path`` still holds ``read``.

    False (nothing changed) when the file's content at the moment of the
    replace is not what was read, or another program has it open for writing
    (:func:`~.replacing.replace_if_holding`). When an edit landed in the
    replaced file during the rename: that edit (to merge again) and what was
    written (what the file must still hold then).
    """
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        raw = text.encode("utf-8")
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(raw)
            handle.flush()
            os.fsync(handle.fileno())
        _copy_mode(path, temporary)
        if not snapshot(path).same_as(read):
            Path(temporary).unlink()
            return False
        written = os.stat(temporary)
        outcome = replace_if_holding(path, Path(temporary), read.digest if read.raw is not None else None, deadline)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    if outcome is False:
        return False
    mine = Snapshot(raw, (written.st_size, written.st_mtime_ns, written.st_ino), hashlib.sha256(raw).hexdigest())
    remember_written(path, mine)
    if outcome is True:
        return True
    return reading_of(outcome, path), mine


def _copy_mode(path: Path, temporary: str) -> None:
    """Give the new version the permissions of the file it replaces (a new file stays private: 0600)."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return
    os.chmod(temporary, mode)
