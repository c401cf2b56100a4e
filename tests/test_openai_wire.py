"""Reading what an OpenAI-compatible server sends, without a server: event framing, bounds, field checks."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_llm_manager.backends.openai.wire import (
    MAX_LINE_BYTES,
    BadAnswer,
    SlowAnswer,
    chunk_facts,
    completion_facts,
    event_data,
    read_json,
    served_ids,
)

STREAM = (b': a comment\r\n\r\ndata: {"a": 1}\r\n\r\nevent: message\nid: 7\ndata: {"b":\ndata: 2}\n\n'
          b"retry: 100\n\ndata: \n\ndata: [DONE]")
EXPECTED = ['{"a": 1}', '{"b":\n2}', "[DONE]"]
ENDINGS = [b"", b"\n", b"\r\n", b"\n\n", b"\nevent: end"]  # the last event may end with the bytes


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(cut, len(data)) for cut in cuts})
    return [data[start:end] for start, end in zip([0, *points], [*points, len(data)]) if data[start:end]]


@given(st.sampled_from(ENDINGS), st.lists(st.integers(min_value=0, max_value=len(STREAM) + 12), max_size=12))
def test_events_are_the_same_wherever_the_bytes_are_split(ending, cuts):
    assert list(event_data(split(STREAM + ending, cuts), max_bytes=10_000, quiet_s=60)) == EXPECTED


class Ticks:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keep_alives_do_not_reset_the_quiet_clock_but_events_do():
    clock = Ticks()

    def blocks():
        for _ in range(3):
            clock.now += 4
            yield b": keep-alive\n\n"

    with pytest.raises(SlowAnswer, match="sent no answer data for 10 s"):
        list(event_data(blocks(), max_bytes=10_000, quiet_s=10, clock=clock))

    def answers():
        for _ in range(5):
            clock.now += 4
            yield b'data: {"x": 1}\n\n'

    assert len(list(event_data(answers(), max_bytes=10_000, quiet_s=10, clock=clock))) == 5


def test_the_time_a_caller_holds_an_event_is_not_the_servers():
    clock = Ticks()
    events = event_data(iter([b"data: 1\n\n", b"data: 2\n\n"]), max_bytes=10_000, quiet_s=10, clock=clock)
    assert next(events) == "1"
    clock.now += 3600  # the caller reads slowly
    assert next(events) == "2"


def test_bytes_and_lines_are_bounded():
    with pytest.raises(BadAnswer, match="sent more than"):
        list(event_data(iter([b": x\n"] * 10_000), max_bytes=20_000, quiet_s=60))
    with pytest.raises(BadAnswer, match="line longer than"):
        list(event_data(iter([b"data: " + b"x" * (MAX_LINE_BYTES + 1)]), max_bytes=1 << 30, quiet_s=60))
    with pytest.raises(BadAnswer, match="sent more than"):
        read_json(iter([b"[1, " * 1000]), max_bytes=1000, within_s=60, what="an answer")


def test_good_chunks_and_answers_give_their_facts():
    facts = chunk_facts({"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}]}, raw=False)
    assert (facts.text, facts.finish, facts.usage) == ("Hi", None, None)
    facts = chunk_facts({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}, raw=False)
    assert facts.usage is not None and (facts.usage.prompt_tokens, facts.usage.completion_tokens) == (3, 2)
    assert chunk_facts({"choices": [{"finish_reason": "stop"}]}, raw=False).finish == "stop"  # no delta at the end
    assert chunk_facts({"choices": [{"text": "raw", "finish_reason": None}]}, raw=True).text == "raw"
    answer = {"choices": [{"message": {"content": None}, "finish_reason": "length"}]}
    assert (completion_facts(answer, raw=False).text, completion_facts(answer, raw=False).finish) == ("", "length")


@pytest.mark.parametrize("data", [{"id": "x"}, {"data": [{"object": "model"}]}, {"data": [5]}, {"data": "a"}, []])
def test_a_model_list_without_ids_is_a_bad_answer(data):
    with pytest.raises(BadAnswer):
        served_ids(data)


def test_a_reported_error_is_quoted_in_a_bounded_excerpt():
    with pytest.raises(BadAnswer) as caught:
        chunk_facts(json.loads(json.dumps({"error": {"message": "disk full " * 10_000}})), raw=False)
    assert "reported an error" in str(caught.value) and len(str(caught.value)) < 400
