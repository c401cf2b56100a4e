"""Converted copies of GGUF files: what transformers loads instead of dequantizing a file again.

transformers reads a GGUF file by dequantizing every tensor (about 11 s for
a 135M-parameter model on two cores, plus 3 s for its tokenizer). The first
load keeps a converted copy, safetensors in the dtype the model runs in, so
the next load of the same file takes a fraction of a second. A copy is keyed
by the file's identity (path, size, modification time), the dtype and the
transformers version; it is written to a temporary folder and renamed into
place once complete, and a copy whose files do not match its manifest is
rebuilt, never loaded. At most :data:`MAX_COPIES` are kept, the least
recently used going first; ``jupyter-llm-manager cache`` lists and clears them.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from filelock import FileLock

from ...estimates import read_safetensors_header
from ...support.paths import cache_folder

__all__ = ["MAX_COPIES", "ConvertedCopies", "ConvertedCopy"]

MAX_COPIES = 4
_MANIFEST = "jupyter-llm-manager.json"


@dataclass(frozen=True)
class ConvertedCopy:
    """One converted copy: where it is, what it came from, its size and when it was last used."""

    folder: Path
    source: str
    dtype: str
    bytes: int
    last_used: float


class ConvertedCopies:
    """The converted copies under ``root`` (``<cache>/converted`` by default)."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or cache_folder() / "converted"

    def folder_for(self, identity: str, dtype: str, version: str) -> Path:
        """Where the copy of a file (by identity), in ``dtype``, made by this transformers ``version`` lives."""
        digest = hashlib.sha256(f"{identity}|{dtype}|{version}".encode()).hexdigest()[:20]
        return self.root / digest

    def usable(self, folder: Path) -> bool:
        """Whether a complete, intact copy is there (every file of its manifest, at its size, readable)."""
        try:
            manifest = json.loads((folder / _MANIFEST).read_text())
            for name, size in manifest["files"].items():
                if (folder / name).stat().st_size != size:
                    return False
            for name in manifest["files"]:
                if name.endswith(".safetensors"):
                    read_safetensors_header(folder / name)
        except (OSError, ValueError, KeyError, TypeError):
            return False
        return True

    def touch(self, folder: Path) -> None:
        """Mark a copy as just used (the least recently used copies are the ones removed)."""
        os.utime(folder / _MANIFEST)

    def store(self, folder: Path, source: str, dtype: str, write: Any) -> None:
        """Make the copy: ``write(temporary_folder)`` writes it, then it is renamed into place.

        Under a lock, so two kernels converting one file at once write it once;
        a stale or broken copy in the way is replaced. Old copies beyond
        :data:`MAX_COPIES` are removed.
        """
        self.root.mkdir(parents=True, exist_ok=True)
        with FileLock(str(folder) + ".lock", timeout=600):
            if self.usable(folder):
                return
            temporary = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
            shutil.rmtree(temporary, ignore_errors=True)
            try:
                write(temporary)
                files = {p.name: p.stat().st_size for p in temporary.iterdir() if p.is_file()}
                (temporary / _MANIFEST).write_text(json.dumps({"source": source, "dtype": dtype, "files": files,
                                                                "made": time.time()}))
                shutil.rmtree(folder, ignore_errors=True)
                os.replace(temporary, folder)
            finally:
                shutil.rmtree(temporary, ignore_errors=True)
        self._prune(keep=folder)

    def discard(self, folder: Path) -> None:
        shutil.rmtree(folder, ignore_errors=True)

    def entries(self) -> list[ConvertedCopy]:
        """Every copy, most recently used first."""
        found = []
        for manifest in self.root.glob(f"*/{_MANIFEST}"):
            try:
                facts = json.loads(manifest.read_text())
            except (OSError, ValueError):
                continue
            size = sum(p.stat().st_size for p in manifest.parent.iterdir() if p.is_file())
            found.append(ConvertedCopy(manifest.parent, str(facts.get("source", "?")), str(facts.get("dtype", "?")),
                                       size, manifest.stat().st_mtime))
        return sorted(found, key=lambda copy: copy.last_used, reverse=True)

    def clear(self) -> list[ConvertedCopy]:
        """Remove every copy (and leftovers of interrupted conversions); returns what was removed."""
        removed = self.entries()
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        return removed

    def _prune(self, keep: Path) -> None:
        for old in self.entries()[MAX_COPIES:]:
            if old.folder != keep:
                shutil.rmtree(old.folder, ignore_errors=True)
