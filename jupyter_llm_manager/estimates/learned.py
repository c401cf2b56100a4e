"""Estimates that learn: the measured-to-estimated ratio of past loads corrects the next estimate.

After each load the manager records how the measured footprint compares
with what the metadata estimated (:func:`record_load`), per kind of load: the
backend, the device kind and the precision (dtype and quantization; for a
GGUF file on llama.cpp, the file's main weight type and the KV cache types,
such as ``llama_cpp|cpu|auto|q4_1 kv q8_0/f16|total``). Where
the footprint counts everything (llama.cpp's buffers) the ratio is of the
totals; where it counts the weights only (transformers allocates its KV
cache per call) it is of the weights, and only the weights are corrected.
The median of the last :data:`KEPT` ratios of a kind corrects the next
estimate of that kind (:func:`corrected`), shown as a correction in the
estimate; a ratio within 2% of 1 changes nothing.

The ratios live in the user's cache folder, one small JSON file written
atomically under a lock, bounded (:data:`KEPT` ratios of at most
:data:`KINDS` kinds), so several processes may record at once;
``jupyter-llm-manager cache --clear-corrections`` forgets them. A load never
waits for the file: its ratio is written a moment later by a short-lived
thread (and at exit), several loads' ratios in one write.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ..config.spec import ModelSpec
from ..errors import ModelLoadingError
from ..gguf.files import cache_type_label, gguf_path, read_gguf
from ..reports import MemoryEstimate
from ..support.paths import cache_folder
from ..support.regular_files import load_json
from ..support.units import format_bytes

__all__ = ["KEPT", "KINDS", "Corrections", "Lesson", "corrected", "corrections", "lesson", "record_load"]

log = logging.getLogger(__name__)

KEPT = 20  # the recent ratios kept per kind
KINDS = 64  # the kinds kept (the least recently recorded go first)
_NOISE = 0.02  # a median this close to 1 corrects nothing
_BELIEVED = (0.05, 20.0)  # a ratio outside this range is a broken measurement, not a lesson
_SMALLEST = 1 << 20  # estimates below 1 MiB are too small to learn from
_MAX_FILE = 1 << 20
_LOCK_TIMEOUT_S = 2.0
_GATHER_S = 0.2  # how long after a load its ratio is written
_FILE = "estimate_corrections.json"


def _kind(spec: ModelSpec, device: str, part: str) -> str:
    return f"{spec.backend}|{device.split(':', 1)[0]}|{spec.dtype}|{_quantization(spec)}|{part}"


def _quantization(spec: ModelSpec) -> str:
    """The spec's quantization; for a GGUF file on llama.cpp, the file's (its header's main weight type) and
    the KV cache types: ``q4_1 kv f16/f16``, so what one file or cache type taught does not correct another."""
    if spec.backend != "llama_cpp":
        return spec.quantization or "none"
    path = gguf_path(spec)
    try:
        weights = read_gguf(path).weights_type if path is not None else "unknown"
    except ModelLoadingError:
        weights = "unknown"
    key, value = (cache_type_label(spec.load_kwargs.get(name)) for name in ("type_k", "type_v"))
    return f"{weights} kv {key}/{value}"


def _applies(spec: ModelSpec) -> bool:
    """Whether a spec's estimate comes from metadata of a local model (a declared size or a server is not)."""
    return spec.required_memory is None and spec.adapter is None and spec.backend in ("transformers", "llama_cpp")


class Corrections:
    """The recorded ratios in one file; reads are kept until the file changes."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path or cache_folder() / _FILE
        self._lock = threading.Lock()
        self._seen: tuple[int, int] | None = None
        self._kinds: dict[str, dict[str, Any]] = {}
        self._pending: list[tuple[str, float]] = []  # recorded, not written yet
        self._writer: threading.Thread | None = None

    def kinds(self) -> dict[str, dict[str, Any]]:
        """Kind -> ``{"ratios": [...], "at": wall time of the last}``, as the file says now (and what is
        recorded but not written yet)."""
        try:
            found = os.stat(self.path)
        except OSError:
            found = None
        stamp = (found.st_mtime_ns, found.st_size) if found is not None else None
        with self._lock:
            if stamp is None:
                self._kinds, self._seen = {}, None
            elif stamp != self._seen:
                self._kinds, self._seen = self._read(), stamp
            if not self._pending:
                return self._kinds
            return _merged(self._kinds, self._pending)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            data = load_json(self.path, _MAX_FILE)
        except (OSError, ValueError) as error:
            log.info("the estimate corrections in %s are not used: %s", self.path, error)
            return {}
        kinds = data.get("kinds") if isinstance(data, dict) else None
        if not isinstance(kinds, dict):
            return {}
        return {kind: {"ratios": ratios, "at": float(entry.get("at", 0))}
                for kind, entry in list(kinds.items())[:KINDS]
                if isinstance(kind, str) and isinstance(entry, dict)
                and (ratios := _believed(entry.get("ratios")))}

    def record(self, kind: str, ratio: float) -> None:
        """Add one ratio to ``kind``: written a moment later, off the caller's path (see :meth:`flush`)."""
        with self._lock:
            self._pending.append((kind, ratio))
            if self._writer is not None and self._writer.is_alive():
                return
            self._writer = threading.Thread(target=self._write_soon, name="llm-manager-estimates", daemon=True)
            self._writer.start()

    def _write_soon(self) -> None:
        time.sleep(_GATHER_S)  # the loads of a burst share one write
        try:
            self.flush()
        except (OSError, Timeout) as error:
            log.info("could not record estimate corrections: %s", error)

    def flush(self) -> None:
        """Write the ratios recorded so far (a read-modify-write of the file under its lock, atomic)."""
        with self._lock:
            pending, self._pending = self._pending, []
        if not pending:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(self.path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            self._write({"kinds": _merged(self._read() if self.path.exists() else {}, pending)})

    def clear(self) -> int:
        """Forget every ratio; how many kinds there were."""
        with self._lock:
            self._pending = []
        with FileLock(str(self.path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            count = len(self._read()) if self.path.exists() else 0
            self.path.unlink(missing_ok=True)
        with self._lock:
            self._seen, self._kinds = None, {}
        return count

    def _write(self, data: dict[str, Any]) -> None:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{_FILE}.", suffix=".tmp", dir=self.path.parent)
        try:
            with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
                json.dump(data, handle)
            os.replace(temporary, self.path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def median(self, spec: ModelSpec, part: str, device: str | None) -> tuple[float, int, str] | None:
        """The median ratio of the kind of ``spec`` on ``device`` (``None``: the kind last recorded on any device)."""
        kinds = self.kinds()
        if device is not None:
            entry, kind = kinds.get(_kind(spec, device, part)), _kind(spec, device, part)
        else:
            prefix, suffix = f"{spec.backend}|", _kind(spec, "any", part).partition("|any|")[2]
            found = [(value["at"], name) for name, value in kinds.items()
                     if name.startswith(prefix) and name.endswith("|" + suffix)]
            kind = max(found)[1] if found else ""
            entry = kinds.get(kind)
        if not entry:
            return None
        return statistics.median(entry["ratios"]), len(entry["ratios"]), kind.split("|")[1]


def _merged(kinds: dict[str, dict[str, Any]], pending: list[tuple[str, float]]) -> dict[str, dict[str, Any]]:
    """``kinds`` with the ``pending`` ratios added (the newest kinds kept, :data:`KINDS` at most)."""
    merged = dict(kinds)
    for kind, ratio in pending:
        entry = merged.pop(kind, {"ratios": []})
        merged[kind] = {"ratios": [*entry["ratios"], ratio][-KEPT:], "at": time.time()}
    return dict(sorted(merged.items(), key=lambda item: item[1]["at"])[-KINDS:])


def _flush_all() -> None:
    """At exit: what is recorded and not written yet is written."""
    for store in _store:
        try:
            store.flush()
        except (OSError, Timeout) as error:
            log.info("could not record estimate corrections: %s", error)


def _believed(ratios: Any) -> list[float]:
    if not isinstance(ratios, list):
        return []
    return [float(r) for r in ratios[-KEPT:] if isinstance(r, (int, float)) and not isinstance(r, bool)
            and math.isfinite(r) and _BELIEVED[0] <= r <= _BELIEVED[1]]


_store: list[Corrections] = []
_store_lock = threading.Lock()
atexit.register(_flush_all)


def corrections() -> Corrections:
    """The corrections of this user's cache folder (one reader per process, per folder)."""
    folder = cache_folder() / _FILE
    with _store_lock:
        if not _store or _store[0].path != folder:
            _store[:] = [Corrections(folder)]
        return _store[0]


@dataclass(frozen=True)
class Lesson:
    """A learned correction: the median ``ratio`` of past loads of a kind, for the whole measured part of an
    estimate (``part="total"``) or its weights; :meth:`apply` is arithmetic only (a policy may call it)."""

    ratio: float
    part: str
    method: str

    def apply(self, estimate: MemoryEstimate) -> MemoryEstimate:
        if estimate.correction is not None or not estimate.known:
            return estimate
        measured = (estimate.total_bytes - estimate.unmeasured_bytes if self.part == "total"
                    else estimate.weights_bytes)
        total = max(int(estimate.total_bytes + measured * (self.ratio - 1)), 0)
        return replace(estimate, total_bytes=total, correction=self.ratio, correction_method=self.method,
                       uncorrected_bytes=estimate.total_bytes)


def lesson(spec: ModelSpec) -> Lesson | None:
    """What past loads of ``spec``'s kind teach (``None``: nothing, or within 2% of the metadata)."""
    if not _applies(spec):
        return None
    device = None if spec.device == "auto" or isinstance(spec.device, tuple) else spec.device
    store = corrections()
    for part in ("total", "weights"):
        found = store.median(spec, part, device)
        if found is not None and abs(found[0] - 1) > _NOISE:
            ratio, loads, where = found
            return Lesson(ratio, part, f"× {ratio:.2f}{' on the weights' if part == 'weights' else ''}: the median "
                                       f"measured/estimated of the last {loads} load{'s' if loads != 1 else ''} of "
                                       f"{spec.backend} on {where}")
    return None


def corrected(spec: ModelSpec, estimate: MemoryEstimate) -> MemoryEstimate:
    """``estimate`` corrected by what past loads of its kind measured (itself when nothing applies)."""
    found = lesson(spec) if estimate.correction is None and estimate.known else None
    return found.apply(estimate) if found is not None else estimate


def record_load(spec: ModelSpec, devices: tuple[str, ...], estimate: MemoryEstimate, measured: int,
                complete: bool) -> None:
    """Record one load: ``measured`` bytes on ``devices`` against the metadata ``estimate`` (never raises).

    ``complete``: the measurement counts every part the estimate does (but
    :attr:`~MemoryEstimate.unmeasured_bytes`), else only the weights.
    """
    if not _applies(spec) or not estimate.known or measured <= 0 or not devices:
        return
    total = estimate.uncorrected_bytes if estimate.uncorrected_bytes is not None else estimate.total_bytes
    estimated = total - estimate.unmeasured_bytes if complete else estimate.weights_bytes
    if estimated < _SMALLEST:
        return
    ratio = measured / estimated
    if not _BELIEVED[0] <= ratio <= _BELIEVED[1]:
        log.info("not learned from %r: measured %s against %s estimated", spec.id, format_bytes(measured),
                 format_bytes(estimated))
        return
    try:
        corrections().record(_kind(spec, devices[0], "total" if complete else "weights"), round(ratio, 4))
    except (OSError, Timeout) as error:
        log.info("could not record the estimate correction of %r: %s", spec.id, error)
