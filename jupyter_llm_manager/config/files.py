"""The YAML registry file: where it is, what it says, and saving it safely.

One file, found in this order: an explicit path, ``$JUPYTER_LLM_MANAGER_CONFIG``,
``~/.jupyter/llm_manager.yaml``. Three layouts are read: ours (see the README)
and the two that older in-house managers write, so their files work
unchanged. Saving always writes our layout, atomically (temporary file, then
rename) under a lock file, merging with what other kernels saved meanwhile.
"""

from __future__ import annotations

import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..errors import ConfigurationError
from .bounded_yaml import MAX_FILE_BYTES, YamlProblem, dump_yaml, load_yaml
from .layouts import ConfigFile, parse_document
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
    """
    path = Path(path)
    if not path.exists():
        return ConfigFile(path=path)
    data = _read_yaml(path)
    return parse_document(data, path)


def _read_yaml(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:  # refused before it is read
            raise ConfigurationError(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; a configuration "
                                     "file is a few KB", path=str(path))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"cannot read the file: {error}", path=str(path)) from None
    try:
        return load_yaml(text)
    except YamlProblem as problem:
        raise ConfigurationError(problem.message, path=str(path), line=problem.line) from None


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
    kernel meanwhile are kept (no lost update). Ids in ``removed`` are dropped.
    ``defaults`` (every setting's saved form) replaces the file's block; ``tasks`` (name → its
    saved form) replace those tasks, ``inference`` the block of a task layout. A file in another layout is converted to
    ours once, with a ``.bak`` copy of the original.
    """
    path = Path(expand_path(os.fspath(path)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            document = _merged_document(path, models, aliases, set(removed), defaults)
            document["tasks"] = {**document.get("tasks", {}), **(tasks or {})}
            if inference is not None:
                document["inference"] = dict(inference)
            document = {key: value for key, value in document.items() if value}
            _atomic_write(path, dump_yaml(document))
    except Timeout:
        raise ConfigurationError(f"another process has held the lock {path}.lock for "
                                 f"{_LOCK_TIMEOUT_S:.0f} s; try again", path=str(path)) from None
    except PermissionError as error:
        raise ConfigurationError(f"cannot write the file ({error.strerror}); choose a writable "
                                 "config_path", path=str(path)) from None
    except OSError as error:
        raise ConfigurationError(f"cannot write the file: {error}", path=str(path)) from None
    return path


def _merged_document(path: Path, models: Mapping[str, ModelSpec], aliases: Mapping[str, str],
                     removed: set[str], defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    document: dict[str, Any] = {"defaults": dict(defaults or {}), "models": {}, "aliases": {}, "tasks": {},
                                "inference": {}}
    if path.exists():
        current = _read_yaml(path)
        registry = parse_document(current, path)
        if registry.layout not in ("ours", "empty"):
            backup = path.with_name(path.name + ".bak")
            if not backup.exists():
                shutil.copy2(path, backup)
            log.warning("%s was in another manager's layout (%s); it is now saved in ours, with the original "
                        "kept as %s", path, registry.layout, backup)
            document["models"] = {i: s.to_mapping() for i, s in registry.models.items() if not s.task}
            document["aliases"] = {a: t for a, t in registry.aliases.items() if a not in registry.tasks}
            document["tasks"] = {name: task.to_mapping() for name, task in registry.tasks.items()}
            document["inference"] = dict(registry.inference)
        elif current:
            document["models"] = dict(current.get("models") or {})
            document["aliases"] = dict(current.get("aliases") or {})
            document["tasks"] = dict(current.get("tasks") or {})
            document["inference"] = dict(current.get("inference") or {})
            if current.get("defaults") and defaults is None:
                document["defaults"] = dict(current["defaults"])
    for model_id in removed:
        document["models"].pop(model_id, None)
        document["aliases"].pop(model_id, None)
    document["aliases"] = {a: t for a, t in document["aliases"].items() if t not in removed}
    for model_id, spec in models.items():
        document["models"][model_id] = spec.to_mapping(warn=True)
        document["aliases"].pop(model_id, None)
    document["aliases"].update(aliases)
    return {key: value for key, value in document.items() if value}


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
