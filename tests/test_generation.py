"""Generation parameters, prompts and the streaming stop-string filter."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_llm_manager import GenerationParams, InvalidGenerationParameters
from jupyter_llm_manager.generation import StopTextFilter, cut_at_stop, normalize_prompt


def test_layers_merge_and_unknown_keys_go_to_extra():
    params = GenerationParams.build({"max_new_tokens": 256, "temperature": 0.7}, {"temperature": 0.1,
                                                                                  "min_p": 0.05})
    assert (params.max_new_tokens, params.temperature, dict(params.extra)) == (256, 0.1, {"min_p": 0.05})
    assert GenerationParams.build({"stop": "###"}).stop == ("###",)


def test_sampling_follows_temperature_unless_told():
    assert GenerationParams(temperature=0).sampling is False
    assert GenerationParams(temperature=0.8).sampling is True
    assert GenerationParams().sampling is None  # the model's own generation config decides
    assert GenerationParams(temperature=0.8, do_sample=False).sampling is False


@pytest.mark.parametrize("field, value", [
    ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("temperature", -1), ("temperature", float("nan")),
    ("top_p", 0), ("top_p", 1.01), ("top_k", -2), ("seed", -1), ("repetition_penalty", -0.5),
    ("do_sample", "yes"), ("stop", ("",)),
])
def test_out_of_range(field, value):
    with pytest.raises(InvalidGenerationParameters, match=field.split("_")[0]):
        GenerationParams(**{field: value})


def test_prompts():
    assert normalize_prompt("Hi") == "Hi"
    assert normalize_prompt("Hi", system="Be brief") == [{"role": "system", "content": "Be brief"},
                                                         {"role": "user", "content": "Hi"}]
    messages = [{"role": "user", "content": "Hi", "name": "x"}]
    assert normalize_prompt(messages) == [{"role": "user", "content": "Hi"}]
    for bad in ("", "  \n", b"bytes", [], [{"role": "wizard", "content": "x"}], [{"role": "user"}], 42):
        with pytest.raises(InvalidGenerationParameters):
            normalize_prompt(bad)


def test_cut_at_stop():
    assert cut_at_stop("abc###def", ["###", "d"]) == ("abc", True)
    assert cut_at_stop("abc", ["x"]) == ("abc", False)


@given(st.text(max_size=60), st.lists(st.text(min_size=1, max_size=4), max_size=3),
       st.lists(st.integers(min_value=1, max_value=7), min_size=1, max_size=20))
def test_stop_filter_shows_exactly_the_text_before_the_first_stop(text, stops, cuts):
    pieces, position = [], 0
    for size in cuts * 10:
        if position >= len(text):
            break
        pieces.append(text[position:position + size])
        position += size
    pieces.append(text[position:])
    text_filter = StopTextFilter(stops)
    shown = "".join(text_filter.feed(piece) for piece in pieces) + text_filter.flush()
    assert shown == cut_at_stop(text, stops)[0] == text_filter.text
