"""Device memory: what devices exist, how much is free, and each one's budget.

GPUs come from NVML (``pynvml``, from nvidia-ml-py) and, where NVML is
missing, from ``torch.cuda`` if torch is already imported; CPU RAM from
psutil, bounded by the container's cgroup limit (JupyterHub pods see the
host's RAM through psutil). Nothing here imports torch by itself.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reports import GpuProcess
from .support.heavy_imports import ready
from .support.system import psutil

__all__ = [
    "DeviceMemory",
    "DeviceProbe",
    "device_budget",
    "device_kind",
    "device_limit",
    "gpu_processes",
    "probe_devices",
    "release_device_memory",
    "trim_c_heap",
]

log = logging.getLogger(__name__)

DeviceProbe = Callable[[], Sequence["DeviceMemory"]]


@dataclass(frozen=True)
class DeviceMemory:
    """One device's memory at one moment, as the system reports it."""

    device: str  # "cpu", "cuda:0"
    name: str
    total_bytes: int
    free_bytes: int
    source: str  # "nvml", "torch", "psutil", "cgroup"




def device_kind(device: str) -> str:
    """``cuda`` for ``cuda:1``, ``cpu`` for ``cpu``."""
    return device.split(":", 1)[0]


def device_budget(
    memory: DeviceMemory,
    *,
    fraction: float,
    absolute: int | Mapping[str, int] | None,
    held_bytes: int,
) -> int:
    """Bytes this manager may hold on a device.

    The budget is the device's limit (:func:`device_limit`), and never more
    than what the manager already holds plus what is free now, since other
    processes share the device.
    """
    limit = device_limit(memory, fraction=fraction, absolute=absolute)
    return int(max(0, min(limit, held_bytes + memory.free_bytes)))


def device_limit(memory: DeviceMemory, *, fraction: float, absolute: int | Mapping[str, int] | None) -> int:
    """``fraction`` of the device's total, or an absolute size (per device, per kind, or for all)."""
    limit: float = fraction * memory.total_bytes
    if isinstance(absolute, Mapping):
        chosen = absolute.get(memory.device, absolute.get(device_kind(memory.device)))
        if chosen is not None:
            limit = chosen
    elif absolute is not None:
        limit = absolute
    return int(limit)


def probe_devices() -> list[DeviceMemory]:
    """CPU RAM first, then each visible GPU in CUDA index order."""
    return [probe_cpu(), *probe_gpus()]


def probe_cpu() -> DeviceMemory:
    """System RAM from psutil, limited by a cgroup memory limit when one applies."""
    memory = psutil.virtual_memory()
    total, free, source = memory.total, memory.available, "psutil"
    limit, usage = _cgroup_limit_and_usage()
    if limit is not None and limit < total:
        total, source = limit, "cgroup"
        free = max(0, min(free, limit - (usage or 0)))
    return DeviceMemory("cpu", "CPU RAM", int(total), int(free), source)


def _cgroup_limit_and_usage() -> tuple[int | None, int | None]:
    candidates = (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),  # cgroup v2
        ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes"),
    )
    for limit_file, usage_file in candidates:
        limit = _read_int(limit_file)
        if limit is not None and limit < (1 << 60):
            return limit, _read_int(usage_file)
    return None, None


def _read_int(path: str) -> int | None:
    try:
        text = Path(path).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def probe_gpus() -> list[DeviceMemory]:
    """Visible GPUs from NVML, else from ``torch.cuda`` when torch is already loaded."""
    gpus = _nvml_gpus()
    torch = ready("torch")  # only when its import has finished: never a half-imported module
    if gpus is None and torch is not None:
        gpus = _torch_gpus(torch)
    return gpus or []


_nvml_lock = threading.Lock()
_nvml_state: dict[str, object] = {}


def nvml_module():
    """The initialized pynvml module, or ``None`` where there is no NVIDIA driver."""
    with _nvml_lock:
        if "module" not in _nvml_state:
            try:
                import pynvml
            except ImportError as error:
                _nvml_unavailable(error)
                return None
            try:
                pynvml.nvmlInit()
                _nvml_state["module"] = pynvml
            except (pynvml.NVMLError, OSError) as error:  # no library, no driver, driver errors
                _nvml_unavailable(error)
        return _nvml_state["module"]


def _nvml_unavailable(error: BaseException) -> None:
    log.debug("NVML is not available: %s", error)
    _nvml_state["module"] = None
    _nvml_state["error"] = str(error)


def nvml_error() -> str | None:
    """Why NVML is unavailable, after a probe (for ``doctor``)."""
    nvml_module()
    return _nvml_state.get("error")  # type: ignore[return-value]




def gpu_processes() -> list[GpuProcess]:
    """Every process with memory on a visible GPU, from NVML's per-process figures (none without NVML)."""
    pynvml = nvml_module()
    if pynvml is None:
        return []
    found = []
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        for cuda_index, nvml_index in enumerate(_visible_nvml_indices(uuids)):
            for process in pynvml.nvmlDeviceGetComputeRunningProcesses(handles[nvml_index]):
                used = getattr(process, "usedGpuMemory", None)
                found.append(GpuProcess(int(process.pid), _process_name(int(process.pid)), f"cuda:{cuda_index}",
                                        int(used) if isinstance(used, int) else 0))
    except pynvml.NVMLError as error:
        log.debug("NVML did not list GPU processes: %s", error)
    return found


def _process_name(pid: int) -> str:
    try:
        import psutil

        return " ".join(psutil.Process(pid).cmdline()[:3])[:120] or psutil.Process(pid).name()
    except Exception:  # noqa: BLE001 - a process that ended or is another user's: its pid is enough
        return f"pid {pid}"


def _nvml_gpus() -> list[DeviceMemory] | None:
    pynvml = nvml_module()
    if pynvml is None:
        return None
    try:
        handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        uuids = [_text(pynvml.nvmlDeviceGetUUID(h)) for h in handles]
        gpus = []
        for cuda_index, nvml_index in enumerate(_visible_nvml_indices(uuids)):
            handle = handles[nvml_index]
            info = pynvml.nvmlDeviceGetMemoryInfo(handle)
            name = _text(pynvml.nvmlDeviceGetName(handle))
            gpus.append(DeviceMemory(f"cuda:{cuda_index}", name, int(info.total), int(info.free), "nvml"))
        return gpus
    except pynvml.NVMLError as error:
        log.warning("NVML failed to report GPU memory (%s); using torch.cuda figures", error)
        return None


def _text(value: str | bytes) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _visible_nvml_indices(uuids: Sequence[str]) -> list[int]:
    """NVML indices in CUDA order, honouring ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(len(uuids)))
    indices = []
    for entry in (part.strip() for part in visible.split(",")):
        if entry.isdigit() and int(entry) < len(uuids):
            indices.append(int(entry))
        elif entry.startswith("GPU-") and any(u.startswith(entry) for u in uuids):
            indices.append(next(i for i, u in enumerate(uuids) if u.startswith(entry)))
        else:
            break  # CUDA ignores everything after the first invalid entry
    return indices


def _torch_gpus(torch: Any) -> list[DeviceMemory] | None:
    try:
        if not torch.cuda.is_available():
            return None
        gpus = []
        for index in range(torch.cuda.device_count()):
            free, total = torch.cuda.mem_get_info(index)
            name = torch.cuda.get_device_name(index)
            gpus.append(DeviceMemory(f"cuda:{index}", name, int(total), int(free), "torch"))
        return gpus
    except (RuntimeError, AssertionError) as error:  # a broken driver; any thread may ask, so no noise
        log.debug("torch.cuda failed to report GPU memory: %s", error)
        return None


def release_device_memory(torch: Any, devices: tuple[str, ...]) -> None:
    """Return freed memory to the devices: ``synchronize`` + ``empty_cache`` per CUDA device, the C heap for RAM.

    ``torch`` is the module when the caller has it (``None`` otherwise): nothing here imports it.
    """
    if torch is not None and torch.cuda.is_initialized():
        for device in (d for d in devices if d.startswith("cuda")):
            with torch.cuda.device(torch.device(device)):
                torch.cuda.synchronize()
                torch.cuda.empty_cache()
    if "cpu" in devices:
        trim_c_heap()


def trim_c_heap() -> None:
    """Give freed C-heap pages back to the OS so process RSS drops after an unload (glibc only)."""
    trim = _malloc_trim_function()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim_function() -> Any:
    """glibc's ``malloc_trim``, looked up once: ``find_library`` runs ldconfig (1.6 ms here)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError as error:
        log.debug("malloc_trim unavailable: %s", error)
        return None
