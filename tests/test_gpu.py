"""What only a GPU shows: CUDA memory back to its baseline after unload and eviction.

Skipped, with the reason, where torch sees no CUDA device (see conftest).
"""

from __future__ import annotations

import dataclasses
import gc

import pytest

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.models.tiny import LARGE, build_tiny_model

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module")
def gpu_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("gpu") / "tiny-large", LARGE)


def cuda_figures(torch):
    torch.cuda.synchronize()
    return torch.cuda.memory_allocated(0), torch.cuda.memory_reserved(0)


def test_unload_returns_cuda_memory_to_its_baseline(gpu_model):
    import torch

    torch.cuda.init()
    baseline = cuda_figures(torch)
    manager = LLMManager(config_path=False, preload=False)
    manager.register("big", source=str(gpu_model), device="cuda:0", dtype="float16")
    manager.generate("big", "Hello", max_new_tokens=16, min_new_tokens=16)
    loaded = cuda_figures(torch)
    assert loaded[0] > baseline[0] and manager.row("big").actual_bytes > 0
    report = manager.unload("big")
    assert report.collected and report.freed_bytes >= manager.estimate("big").weights_bytes * 0.95
    assert cuda_figures(torch) == baseline  # allocated and reserved: empty_cache gave it all back
    manager.close()


def test_eviction_under_a_gpu_budget_frees_the_victim(gpu_model, tmp_path):
    import torch

    second = build_tiny_model(tmp_path / "other", dataclasses.replace(LARGE, seed=5))
    baseline = cuda_figures(torch)
    manager = LLMManager(max_loaded_models=1, config_path=False, preload=False)
    manager.register("first", source=str(gpu_model), device="cuda:0")
    manager.register("second", source=str(second), device="cuda:0")
    manager.load("first")
    one_model = cuda_figures(torch)[0] - baseline[0]
    manager.load("second")
    assert manager.row("first").state == "registered"
    assert cuda_figures(torch)[0] - baseline[0] <= one_model * 1.05
    manager.close()
    gc.collect()
    assert cuda_figures(torch) == baseline


def test_devices_report_the_gpu_from_nvml_or_torch():
    manager = LLMManager(config_path=False, preload=False)
    gpus = [d for d in manager.devices() if d.device.startswith("cuda")]
    assert gpus and gpus[0].total_bytes > 0 and gpus[0].source in ("nvml", "torch")


def test_two_kernels_share_one_gpu_and_the_holders_memory_returns_to_its_baseline(gpu_model, tmp_path):
    from jlm_helpers.kernels import Kernel

    sizer = LLMManager(config_path=False, preload=False, cooperate=False)
    sizer.register("m", source=str(gpu_model), device="cuda:0", dtype="float16")
    budget = int(sizer.estimate("m").total_bytes * 1.5)  # one model fits, two do not
    sizer.close()
    settings = {"memory_budget": {"cuda:0": budget}, "wait_timeout": 60}
    models = {"m": {"source": str(gpu_model), "device": "cuda:0", "dtype": "float16"}}
    ledger = tmp_path / "ledger.sqlite"
    a, b = Kernel("holder.ipynb", tmp_path, ledger), Kernel("requester.ipynb", tmp_path, ledger)
    try:
        for kernel in (a, b):
            assert kernel.ask("start", settings=settings, models=models)["ok"], kernel.stderr_tail()
        baseline = a.ask("cuda")["allocated"]
        assert a.ask("load", id="m")["ok"] and a.ask("cuda")["allocated"] > baseline
        loaded = b.ask("load", id="m", wait=60)
        assert loaded["ok"], loaded
        evicted = [e for e in a.ask("events")["events"] if e["kind"] == "evicted"]
        assert [e["reason"] for e in evicted] == ["other_kernel"] and "requester.ipynb" in evicted[0]["message"]
        assert a.ask("cuda")["allocated"] == baseline
        assert b.ask("states")["states"]["m"] == "loaded" and a.ask("states")["states"]["m"] == "registered"
    finally:
        a.close()
        b.close()
