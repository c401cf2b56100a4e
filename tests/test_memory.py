"""Device memory: budgets, CUDA_VISIBLE_DEVICES, cgroup limits, and the real probe."""

import pytest

from jupyter_llm_manager import devices as memory
from jupyter_llm_manager.devices import DeviceMemory, device_budget

GB = 1000**3


def test_budget_is_a_fraction_capped_by_what_is_free():
    gpu = DeviceMemory("cuda:0", "gpu", 80 * GB, 30 * GB, "fake")
    assert device_budget(gpu, fraction=0.9, absolute=None, held_bytes=40 * GB) == 70 * GB
    assert device_budget(gpu, fraction=0.9, absolute=None, held_bytes=0) == 30 * GB
    assert device_budget(gpu, fraction=0.5, absolute=None, held_bytes=40 * GB) == 40 * GB


def test_absolute_budgets_for_all_or_per_device_or_per_kind():
    gpu = DeviceMemory("cuda:1", "gpu", 80 * GB, 80 * GB, "fake")
    assert device_budget(gpu, fraction=0.9, absolute=10 * GB, held_bytes=0) == 10 * GB
    assert device_budget(gpu, fraction=0.9, absolute={"cuda:1": 5 * GB}, held_bytes=0) == 5 * GB
    assert device_budget(gpu, fraction=0.9, absolute={"cuda": 6 * GB}, held_bytes=0) == 6 * GB
    assert device_budget(gpu, fraction=0.5, absolute={"cpu": 6 * GB}, held_bytes=0) == 40 * GB


@pytest.mark.parametrize("visible, expected", [
    (None, [0, 1, 2]), ("2,0", [2, 0]), ("1,7,2", [1]), ("GPU-bbb", [1]), ("", []), ("-1", []),
])
def test_cuda_visible_devices_order(monkeypatch, visible, expected):
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert memory._visible_nvml_indices(["GPU-aaa1", "GPU-bbb2", "GPU-ccc3"]) == expected


def test_cgroup_limit_bounds_cpu_memory(monkeypatch):
    limit = 2 * GB
    monkeypatch.setattr(memory, "_cgroup_limit_and_usage", lambda: (limit, GB // 2))
    cpu = memory.probe_cpu()
    assert cpu.total_bytes == limit and cpu.free_bytes <= limit - GB // 2 and cpu.source == "cgroup"


def test_the_real_probe_reports_cpu_and_whatever_gpus_exist():
    devices = memory.probe_devices()
    assert devices[0].device == "cpu" and devices[0].total_bytes > devices[0].free_bytes > 0
    assert all(d.device.startswith("cuda:") and d.total_bytes > 0 for d in devices[1:])
