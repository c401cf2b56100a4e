"""Converted copies of GGUF files: what transformers loads instead of dequantizing a file again.

transformers reads a GGUF file by dequantizing every tensor (about 11 s for
a 135M-parameter model on two cores, plus 3 s for its tokenizer). The first
load keeps a converted copy, safetensors in the dtype the model runs in, so
the next load of the same file takes a fraction of a second. A copy is keyed
by the file's identity (path, size, modification time), the dtype and the
transformers version; it is written to a temporary ``<copy>.partial-<pid>``
folder and renamed into place once complete. At most :data:`MAX_COPIES` are
kept, the least recently used going first; ``jupyter-llm-manager cache``
lists and clears them.

A copy is trusted only while it is what was written: its manifest records,
for each file, its size, modification time, a SHA-256 of the whole file and
one of :data:`.checksums.SAMPLED_BLOCKS` blocks spread over it. A load checks the size
and the sampled blocks (a few MB read, whatever the size), and the whole file
when its modification time changed; a copy that fails is rebuilt, never loaded
(weights overwritten in place load silently and answer nonsense).

A conversion killed mid-write (SIGKILL, a crash) leaves its partial folder.
Partials whose process is gone (no such pid, or a pid reused by a process
started after the partial was last written) and whose copy nobody is writing
are listed by ``jupyter-llm-manager cache``, removed by ``cache --clear`` and
before each new conversion.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ...estimates import read_safetensors_header
from ...support.paths import cache_folder
from ...support.system import psutil
from ...support.units import brief, excerpt
from .checksums import file_facts, file_problem

__all__ = ["MAX_COPIES", "ConvertedCopies", "ConvertedCopy", "Partial"]

log = logging.getLogger(__name__)

MAX_COPIES = 4
_MANIFEST = "jupyter-llm-manager.json"
_PARTIAL = ".partial-"
_CLOCK_SLACK_S = 2.0  # a process's start time is known to about a second (the boot time is whole seconds)


@dataclass(frozen=True)
class ConvertedCopy:
    """One converted copy: where it is, what it came from, its size and when it was last used."""

    folder: Path
    source: str
    dtype: str
    bytes: int
    last_used: float


@dataclass(frozen=True)
class Partial:
    """What an interrupted conversion left: a ``<copy>.partial-<pid>`` folder (or file) of a process that is gone."""

    path: Path
    pid: int
    bytes: int
    modified: float


class ConvertedCopies:
    """The converted copies under ``root`` (``<cache>/converted`` by default)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_folder() / "converted"

    def folder_for(self, identity: str, dtype: str, version: str) -> Path:
        """Where the copy of a file (by identity), in ``dtype``, made by this transformers ``version`` lives."""
        digest = hashlib.sha256(f"{identity}|{dtype}|{version}".encode()).hexdigest()[:20]
        return self.root / digest

    def problem(self, folder: Path) -> str | None:
        """What makes the copy in ``folder`` unusable (missing, incomplete, changed since written); None if intact."""
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
            files = manifest["files"]
        except FileNotFoundError:
            return "it has no manifest (its conversion did not finish)"
        except (OSError, ValueError, KeyError, TypeError) as error:
            return excerpt(f"its manifest cannot be read ({error})")
        if not isinstance(files, dict) or not files:
            return "its manifest lists no files"
        refreshed = False
        for name, facts in files.items():
            if not isinstance(name, str) or Path(name).name != name or name in ("", ".", ".."):
                return excerpt(f"its manifest names {brief(name)}, which is not a file of the copy")
            path = folder / name
            problem = file_problem(path, facts)
            if problem is None and name.endswith(".safetensors"):
                problem = _safetensors_problem(path)
            if problem is not None:
                return excerpt(problem)
            refreshed |= _refresh_mtime(path, facts)
        if refreshed:  # intact, but touched: record the new times so that the next check reads samples only
            _write_manifest(folder, manifest, quiet=True)
        return None

    def usable(self, folder: Path) -> bool:
        """Whether a complete, intact copy is there (see :meth:`problem`)."""
        return self.problem(folder) is None

    def touch(self, folder: Path) -> None:
        """Mark a copy as just used (the least recently used copies are the ones removed)."""
        os.utime(folder / _MANIFEST)

    def store(self, folder: Path, source: str, dtype: str, write: Any) -> None:
        """Make the copy: ``write(temporary_folder)`` writes it, then it is renamed into place.

        Under a lock, so two kernels converting one file at once write it once;
        a stale or broken copy in the way is replaced. The manifest records a
        checksum of every file. Leftovers of dead conversions go first, old
        copies beyond :data:`MAX_COPIES` after.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        self.remove_stale_partials()
        with FileLock(_lock_path(folder), timeout=600):
            if self.usable(folder):
                return
            temporary = folder.with_name(f"{folder.name}{_PARTIAL}{os.getpid()}")
            _remove(temporary)
            try:
                write(temporary)
                files = {p.name: file_facts(p) for p in sorted(temporary.iterdir()) if p.is_file()}
                _write_manifest(temporary, {"source": source, "dtype": dtype, "files": files, "made": time.time()})
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(temporary, folder)
            finally:
                _remove(temporary)
        self._prune(keep=folder)

    def discard(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def entries(self) -> list[ConvertedCopy]:
        """Every copy, most recently used first."""
        found = []
        for manifest in self.root.glob(f"*/{_MANIFEST}"):
            if _PARTIAL in manifest.parent.name:
                continue
            try:
                facts = json.loads(manifest.read_text())
                size = sum(p.stat().st_size for p in manifest.parent.iterdir() if p.is_file())
                used = manifest.stat().st_mtime
            except (OSError, ValueError):
                continue
            if not isinstance(facts, dict):
                continue
            found.append(ConvertedCopy(manifest.parent, str(facts.get("source", "?")), str(facts.get("dtype", "?")),
                                       size, used))
        return sorted(found, key=lambda copy: copy.last_used, reverse=True)

    def stale_partials(self) -> list[Partial]:
        """Leftovers of conversions whose process is gone and whose copy nobody is writing now, oldest first."""
        return sorted((p for p in self._partials() if _is_stale(p) and not _being_written(p.path)),
                      key=lambda partial: partial.modified)

    def remove_stale_partials(self) -> list[Partial]:
        """Remove the leftovers of dead conversions; returns what was removed."""
        removed = []
        for partial in self._partials():
            if not _is_stale(partial):
                continue
            lock = FileLock(_lock_path(partial.path), timeout=0)
            try:
                with lock:  # nobody converts this file now, and nobody starts while it goes
                    _remove(partial.path)
            except Timeout:
                continue
            log.info("removed %s, left by a conversion that was interrupted (process %d is gone)",
                     partial.path, partial.pid)
            removed.append(partial)
        return removed

    def clear(self) -> list[ConvertedCopy]:
        """Remove every copy and the leftovers of dead conversions; returns the copies removed.

        A conversion running now keeps its partial folder and finishes.
        """
        removed = self.entries()
        for copy in removed:
            shutil.rmtree(copy.folder, ignore_errors=True)
        self.remove_stale_partials()
        return removed

    def _partials(self) -> list[Partial]:
        found = []
        for path in self.root.glob(f"*{_PARTIAL}*"):
            pid_text = path.name.rpartition(_PARTIAL)[2]
            if not pid_text.isdigit():
                continue
            try:
                size, modified = _size_and_modified(path)
            except OSError:
                continue  # removed meanwhile
            found.append(Partial(path, int(pid_text), size, modified))
        return found

    def _prune(self, keep: Path) -> None:
        for old in self.entries()[MAX_COPIES:]:
            if old.folder != keep:
                shutil.rmtree(old.folder, ignore_errors=True)


def _lock_path(folder: Path) -> str:
    """The lock of one copy, also held while its partial folder is written (``<copy>.lock``)."""
    return str(folder.with_name(folder.name.partition(_PARTIAL)[0])) + ".lock"


def _is_stale(partial: Partial) -> bool:
    """Whether the process that wrote ``partial`` is gone: no such pid, a zombie, or a pid reused since."""
    try:
        process = psutil.Process(partial.pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return True
        started = process.create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False  # there, but not ours to inspect: assume it is still writing
    return started > partial.modified + _CLOCK_SLACK_S  # started after the partial was last written


def _being_written(path: Path) -> bool:
    """Whether some process (maybe in another container, with other pids) holds the lock of this copy now."""
    try:
        with FileLock(_lock_path(path), timeout=0):
            return False
    except Timeout:
        return True


def _size_and_modified(path: Path) -> tuple[int, float]:
    """Bytes under ``path`` and the last time anything in it was written."""
    stat = path.stat()
    if not path.is_dir():
        return stat.st_size, stat.st_mtime
    size, modified = 0, stat.st_mtime
    for folder, _, names in os.walk(path):
        modified = max(modified, os.stat(folder).st_mtime)
        for name in names:
            entry = os.stat(os.path.join(folder, name))
            size, modified = size + entry.st_size, max(modified, entry.st_mtime)
    return size, modified


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _safetensors_problem(path: Path) -> str | None:
    try:
        read_safetensors_header(path)
    except (OSError, ValueError):
        return f"{path.name} is not a readable safetensors file"
    return None


def _refresh_mtime(path: Path, facts: dict[str, Any]) -> bool:
    """Record a file's new modification time once its content was found intact; whether it changed."""
    mtime = path.stat().st_mtime_ns
    if facts["mtime_ns"] == mtime:
        return False
    facts["mtime_ns"] = mtime
    return True


def _write_manifest(folder: Path, manifest: dict[str, Any], *, quiet: bool = False) -> None:
    """Write the manifest atomically (a reader never sees half of it); ``quiet``: a failure only costs speed."""
    temporary = folder / f".{_MANIFEST}.{os.getpid()}.tmp"
    try:
        temporary.write_text(json.dumps(manifest, indent=1))
        os.replace(temporary, folder / _MANIFEST)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        if not quiet:
            raise
        log.debug("could not update the manifest of %s: %s", folder, error)
