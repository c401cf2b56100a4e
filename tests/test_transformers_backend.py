"""The transformers backend through the manager, on tiny real checkpoints."""

from __future__ import annotations

import _thread
import gc
import json
import logging
import queue
import shutil
import sys
import threading
import weakref

import pytest

from jupyter_llm_manager import (
    ConfigurationError,
    InvalidGenerationParameters,
    LLMManager,
    ModelLoadingError,
    ResourceNotAvailableError,
)


def exactly(n: int) -> dict:
    """Random weights may emit EOS early; ask for exactly ``n`` new tokens."""
    return {"max_new_tokens": n, "min_new_tokens": n}


def test_generate_counts_tokens_and_respects_the_limit(real_manager):
    result = real_manager.generate("a", "Hello there", **exactly(12))
    assert result.completion_tokens == 12 and result.finish_reason == "length"
    assert result.prompt_tokens > 3 and result.seconds > 0 and result.tokens_per_second > 0
    assert isinstance(result.text, str) and str(result) == result.text


def test_greedy_is_deterministic_and_a_seed_repeats_a_sample(real_manager):
    greedy = [real_manager.generate("a", "Hi", temperature=0, **exactly(15)).text for _ in range(2)]
    assert greedy[0] == greedy[1]
    sampled = [real_manager.generate("a", "Hi", temperature=1.0, seed=3, **exactly(15)).text
               for _ in range(2)]
    assert sampled[0] == sampled[1]
    others = {real_manager.generate("a", "Hi", temperature=1.0, seed=s, **exactly(15)).text
              for s in range(4, 8)}
    assert len(others) > 1  # different seeds give different samples


def test_stream_pieces_make_the_final_text(real_manager):
    stream = real_manager.stream("b", [{"role": "user", "content": "Hi"}], **exactly(40))
    pieces = list(stream)
    assert len(pieces) > 1
    assert "".join(pieces) == stream.text == stream.result.text
    assert stream.result.completion_tokens == 40 and stream.result.finish_reason == "length"
    assert real_manager.row("b").in_use == 0


def test_stream_and_generate_agree_on_greedy_text(real_manager):
    expected = real_manager.generate("a", "Hello", **exactly(30)).text
    assert "".join(real_manager.stream("a", "Hello", **exactly(30))) == expected


def test_stop_strings_cut_the_answer_in_generate_and_stream(real_manager):
    full = real_manager.generate("a", "Hello", **exactly(40)).text
    stop = next(full[i:i + 3] for i in range(4, len(full) - 3) if full[i:i + 3].strip() and full[i:i + 3] not in full[:i + 2])
    expected = full[:full.index(stop)]
    result = real_manager.generate("a", "Hello", stop=[stop], **exactly(40))
    assert result.text == expected and result.finish_reason == "stop_string"
    stream = real_manager.stream("a", "Hello", stop=stop, **exactly(40))
    assert "".join(stream) == expected and stream.result.finish_reason == "stop_string"
    assert stream.result.completion_tokens < 40  # generation really stopped early


def test_raw_skips_the_chat_template_and_system_is_sent(real_manager):
    raw = real_manager.generate("a", "Hello", raw=True, max_new_tokens=1)
    templated = real_manager.generate("a", "Hello", max_new_tokens=1)
    with_system = real_manager.generate("a", "Hello", system="Be brief.", max_new_tokens=1)
    assert raw.prompt_tokens < templated.prompt_tokens < with_system.prompt_tokens


def test_the_context_rule(tiny_models):
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("short", source=str(tiny_models["a"]), max_context=40)
        with pytest.raises(InvalidGenerationParameters, match="accepts 40"):
            manager.generate("short", "word " * 60, raw=True)
        result = manager.generate("short", "Hello", raw=True, max_new_tokens=100, min_new_tokens=30)
        assert result.prompt_tokens + result.completion_tokens == 40
        assert result.warnings and "lowered" in result.warnings[0]
        assert any(e.kind == "warning" and "lowered" in e.message for e in manager.events())
    finally:
        manager.close()


def test_an_answer_cut_by_the_context_says_so_instead_of_asking_for_more_tokens(tiny_models):
    from jupyter_llm_manager.frontends.notebook.rendering import footer

    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("short", source=str(tiny_models["a"]), max_context=40)
        options = {"raw": True, "max_new_tokens": 100, "min_new_tokens": 100}
        stream = manager.stream("short", "Hello", **options)
        list(stream)
        for result in (manager.generate("short", "Hello", **options), stream.result):
            assert result.finish_reason == "length" and result.context_limited
            assert "stopped at the end of the context" in footer(result) and "-n" not in footer(result)
        plain = manager.generate("short", "Hello", raw=True, **exactly(5))
        assert not plain.context_limited and footer(plain).endswith("stopped at the 5-token limit: -n to allow more")
    finally:
        manager.close()


@pytest.mark.parametrize("params, message", [
    ({"max_new_tokens": -5}, "max_new_tokens"), ({"temperature": -0.1}, "temperature"),
    ({"top_p": 1.5}, "top_p"), ({"top_k": -1}, "top_k"), ({"repetition_penalty": 0}, "repetition_penalty"),
])
def test_parameters_out_of_range_fail_before_anything_loads(real_manager, params, message):
    with pytest.raises(InvalidGenerationParameters, match=message):
        real_manager.generate("a", "Hi", **params)
    assert real_manager.row("a").state == "registered"


def test_an_empty_prompt_is_a_clear_error(real_manager):
    with pytest.raises(InvalidGenerationParameters, match="empty"):
        real_manager.generate("a", "   ")


def _interrupt_main_soon(delay: float = 0.05) -> threading.Timer:
    """Deliver KeyboardInterrupt to the main thread, as the kernel does on 'Interrupt'."""
    timer = threading.Timer(delay, _thread.interrupt_main)
    timer.start()
    return timer


def _generation_threads():
    return [t for t in threading.enumerate() if t.name.startswith("llm-generate") and t.is_alive()]


def test_an_interrupt_while_streaming_stops_within_a_token_and_keeps_the_model(real_manager):
    stream = real_manager.stream("b", "Tell me a long story", **exactly(1500))  # over 1 s of work
    with pytest.raises(KeyboardInterrupt):
        for index, _ in enumerate(stream):
            if index == 0:
                _interrupt_main_soon()
    assert not _generation_threads()
    row = real_manager.row("b")
    assert row.state == "loaded" and row.in_use == 0
    assert stream.result.finish_reason == "interrupted" and stream.result.text == stream.text != ""
    assert real_manager.generate("b", "Still there?", **exactly(3)).completion_tokens == 3


def test_an_interrupt_during_generate_leaves_no_lease(real_manager):
    real_manager.load("b")
    timer = _interrupt_main_soon(0.2)
    with pytest.raises(KeyboardInterrupt):
        real_manager.generate("b", "Go on", **exactly(2000))  # seconds of work; interrupted after 0.2
    timer.join()
    assert real_manager.row("b").in_use == 0
    assert real_manager.generate("b", "Again", **exactly(2)).completion_tokens == 2


def test_a_stream_closed_early_releases_the_model(real_manager):
    stream = real_manager.stream("a", "Hi", **exactly(200))
    iterator = iter(stream)
    next(iterator)
    assert real_manager.row("a").in_use == 1
    stream.close()
    assert real_manager.row("a").in_use == 0 and not _generation_threads()
    assert stream.result.finish_reason == "interrupted"


def test_a_break_releases_the_model_at_once_without_a_garbage_collection(real_manager):
    gc.disable()  # the release must not depend on the cycle collector running
    try:
        stream = real_manager.stream("b", "Hi", **exactly(400))
        for _ in stream:
            assert real_manager.row("b").in_use == 1
            break
        assert real_manager.row("b").in_use == 0 and not _generation_threads()
        assert stream.result.finish_reason == "interrupted" and stream.result.completion_tokens < 400
    finally:
        gc.enable()


def test_close_ends_a_stream_running_in_another_thread_and_frees_its_model(tiny_models):
    manager = LLMManager(config_path=False, preload=False)
    manager.register("b", source=str(tiny_models["b"]))
    warnings, first_piece = [], threading.Event()
    manager.subscribe(lambda event: warnings.append(event.message) if event.kind == "warning" else None)
    stream = manager.stream("b", "Go on", **exactly(1900))  # far longer than close() waits for leases

    def consume():
        for _ in stream:
            first_piece.set()

    reader = threading.Thread(target=consume)
    reader.start()
    assert first_piece.wait(60)
    manager.close()
    reader.join(10)
    assert not reader.is_alive() and not _generation_threads()
    assert stream.result.finish_reason == "interrupted" and stream.result.completion_tokens < 1900
    assert manager.status() == [] or all(row.state != "loaded" for row in manager.status())
    assert not any("still in use" in (message or "") for message in warnings)


def test_invalid_bytes_stream_instead_of_being_held_back_forever():
    from jupyter_llm_manager.backends.transformers.support import streamer_class

    class HalfCharacters:  # every token is one lone UTF-8 lead byte: the text never becomes whole
        def decode(self, tokens, skip_special_tokens=True):
            return "\ufffd" * len(tokens)

    pieces = queue.Queue()
    streamer = streamer_class()(HalfCharacters(), pieces)
    streamer.put(torch_tensor([[1, 2]]))  # the prompt
    for _ in range(12):
        streamer.put(torch_tensor([7]))
    shown = []
    while not pieces.empty():
        shown.append(pieces.get())
    assert len(shown) >= 2 and all(len(piece) <= 4 for piece in shown)  # shown every few tokens, small windows
    streamer.end()
    while not pieces.empty():
        shown.append(pieces.get())
    assert "".join(shown) == "\ufffd" * 12


def torch_tensor(values):
    import torch

    return torch.tensor(values)


def test_stop_from_another_thread(real_manager):
    stream = real_manager.stream("a", "Hi", **exactly(2000))
    pieces = []
    for piece in stream:
        pieces.append(piece)
        if len(pieces) == 2:
            threading.Thread(target=stream.stop).start()
    assert stream.result.finish_reason == "interrupted" and stream.result.completion_tokens < 2000


@pytest.mark.slow
def test_thirty_load_unload_cycles_collect_the_model_every_time(real_manager):
    references = []
    for _ in range(30):
        real_manager.load("a")
        with real_manager.use("a") as lease:
            references.append(weakref.ref(lease.model))
        report = real_manager.unload("a")
        assert report.collected and report.freed_bytes > 0
    gc.collect()
    assert all(ref() is None for ref in references)
    assert real_manager.lingering() == {}


@pytest.mark.parametrize("returned_training", [False, True])
def test_a_loaded_model_is_in_eval_mode(real_manager, monkeypatch, returned_training):
    """Dropout off for generation, also where from_pretrained hands back a model in training mode."""
    import transformers

    original = transformers.AutoModelForCausalLM.from_pretrained

    def from_pretrained(*args, **kwargs):
        model = original(*args, **kwargs)
        return model.train() if returned_training else model

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    real_manager.load("a")
    with real_manager.use("a") as lease:
        assert not any(module.training for module in lease.model.modules())


def test_estimate_matches_the_real_footprint(real_manager):
    estimate = real_manager.estimate("a")
    real_manager.load("a")
    row = real_manager.row("a")
    # the footprint also counts buffers that checkpoints do not store (rotary inv_freq): a few bytes more
    assert estimate.weights_bytes <= row.actual_bytes <= estimate.weights_bytes * 1.01
    assert estimate.kv_cache_bytes > 0 and estimate.total_bytes == row.estimated_bytes
    assert "safetensors header" in estimate.weights_method


def test_a_variable_that_keeps_the_model_alive_is_named(real_manager):
    namespace = sys.modules["__main__"].__dict__
    with real_manager.use("a") as lease:
        namespace["kept_model"] = lease.model
    try:
        report = real_manager.unload("a")
        assert not report.collected
        assert any("kept_model" in holder for holder in report.holders)
        assert "kept_model" in str(report)
        warning = [e for e in real_manager.events() if e.kind == "warning"][-1]
        assert "kept_model" in warning.message and "del" in warning.message
        assert "a" in real_manager.lingering()
    finally:
        del namespace["kept_model"]
    assert real_manager.collect_garbage().lingering == {}


def test_the_last_traceback_is_named_as_a_holder(real_manager):
    def failing(model):
        raise ValueError("boom")

    with real_manager.use("a") as lease:
        try:
            failing(lease.model)
        except ValueError as error:
            sys.last_traceback, sys.last_value = error.__traceback__, error
    try:
        report = real_manager.unload("a")
        assert not report.collected and any("traceback" in holder for holder in report.holders)
    finally:
        sys.last_traceback = sys.last_value = None
    assert real_manager.lingering() == {}


# -- bad input ----------------------------------------------------------------------------

def test_a_local_path_that_does_not_exist(real_manager, tmp_path):
    with pytest.raises(ConfigurationError, match="does not exist"):
        real_manager.register("ghost", source=str(tmp_path / "nothing-here"))
    assert [r.id for r in real_manager.status()] == ["a", "b"]


def test_a_folder_without_weights(real_manager, tiny_models, tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    shutil.copy(tiny_models["a"] / "config.json", folder)
    real_manager.register("empty", source=str(folder))
    real_manager.load("a")
    with pytest.raises(ModelLoadingError, match="no weight files"):
        real_manager.load("empty")
    assert real_manager.row("a").state == "loaded" and real_manager.row("empty").state == "failed"


def test_a_corrupted_safetensors_file(real_manager, tiny_models, tmp_path):
    folder = tmp_path / "corrupted"
    shutil.copytree(tiny_models["a"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(b"\xff" * 8 + weights.read_bytes()[8:100])
    real_manager.register("broken", source=str(folder))
    with pytest.raises(ModelLoadingError, match="corrupted"):
        real_manager.load("broken")
    assert real_manager.row("broken").state == "failed"
    assert real_manager.generate("a", "fine", **exactly(2)).completion_tokens == 2


def test_a_checkpoint_that_transformers_rejects(real_manager, tiny_models, tmp_path):
    folder = tmp_path / "bad-config"
    shutil.copytree(tiny_models["a"], folder)
    config = json.loads((folder / "config.json").read_text())
    config["hidden_size"] = 48  # weights no longer match the config
    (folder / "config.json").write_text(json.dumps(config))
    real_manager.register("mismatch", source=str(folder))
    with pytest.raises(ModelLoadingError, match="could not load 'mismatch'"):
        real_manager.load("mismatch")


@pytest.mark.parametrize("field, value", [("dtype", "float8"), ("device", "gpu0"), ("device", "cuda:x"),
                                          ("quantization", "3bit")])
def test_invalid_option_strings(real_manager, tiny_models, field, value):
    with pytest.raises(ConfigurationError, match=field):
        real_manager.register("bad", source=str(tiny_models["a"]), **{field: value})


def test_cuda_without_cuda(tiny_models):
    """Runs on GPU machines too: the manager sees only the CPU, as where no GPU is usable."""
    from jupyter_llm_manager.devices import probe_cpu

    manager = LLMManager(config_path=False, preload=False, device_probe=lambda: [probe_cpu()])
    try:
        manager.register("gpu", source=str(tiny_models["a"]), device="cuda:0")
        with pytest.raises(ResourceNotAvailableError, match="none is usable"):
            manager.load("gpu")
        assert manager.row("gpu").state == "registered"
    finally:
        manager.close()


def test_quantization_without_bitsandbytes_or_cuda(real_manager, tiny_models):
    real_manager.register("q", source=str(tiny_models["a"]), quantization="4bit", device="cpu")
    with pytest.raises(ModelLoadingError, match="bitsandbytes|CUDA GPU"):
        real_manager.load("q")
    assert real_manager.row("q").state == "failed"


def test_trust_remote_code_is_off_unless_asked_and_warns(real_manager, tiny_models, caplog):
    assert real_manager.spec("a").trust_remote_code is False
    real_manager.register("trusting", source=str(tiny_models["a"]), trust_remote_code=True)
    with caplog.at_level(logging.WARNING, logger="jupyter_llm_manager"):
        real_manager.load("trusting")
    assert any("'trusting'" in r.getMessage() and "trust_remote_code" in r.getMessage() for r in caplog.records)
    assert real_manager.row("trusting").trust_remote_code


# -- the default repetition penalty and the stop before a third appearance ----------------------------

def test_the_default_penalty_changes_greedy_output_and_1_0_gives_the_raw_output(real_manager):
    from jupyter_llm_manager.backends.transformers.support import encode

    raw = real_manager.generate("a", "Hello", temperature=0, repetition_penalty=1.0, max_new_tokens=60)
    with real_manager.use("a") as lm:
        inputs = encode(lm.tokenizer, "Hello", raw=False)
        output = lm.model.generate(**inputs, do_sample=False, max_new_tokens=60, repetition_penalty=1.0,
                                   pad_token_id=lm.tokenizer.eos_token_id)
        expected = lm.tokenizer.decode(output[0, inputs["input_ids"].shape[-1]:], skip_special_tokens=True)
    assert raw.text == expected
    assert real_manager.generate("a", "Hello", temperature=0, max_new_tokens=60).text != expected


class Forced:
    """A logits processor that makes the model say ``ids`` over and over: a loop, whatever the weights."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __call__(self, input_ids, scores):
        wanted = self.ids[input_ids.shape[-1] % len(self.ids)]
        forced = scores.new_full(scores.shape, float("-inf"))
        forced[:, wanted] = 0.0
        return forced


def test_a_loop_ends_before_a_passage_appears_a_third_time_in_generate_and_stream(real_manager):
    from jupyter_llm_manager.generation import cut_at_repetition

    with real_manager.use("a") as lm:
        loop = Forced(lm.tokenizer(" la femme au martyre,", add_special_tokens=False)["input_ids"])
    options = {"temperature": 0, "max_new_tokens": 120, "logits_processor": [loop]}
    raw = real_manager.generate("a", "Hello", repetition_penalty=1.0, **options)
    assert raw.finish_reason == "length" and raw.completion_tokens == 120  # untouched without the penalty
    expected, stopped = cut_at_repetition(raw.text)
    assert stopped and "femme au martyre" in expected
    result = real_manager.generate("a", "Hello", **options)
    assert (result.text, result.finish_reason) == (expected, "repetition")
    assert result.completion_tokens < 60  # generation really stopped there
    stream = real_manager.stream("a", "Hello", **options)
    assert "".join(stream) == expected and stream.result.finish_reason == "repetition"
    assert stream.result.completion_tokens < 60
