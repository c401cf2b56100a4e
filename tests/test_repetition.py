"""The stop before a passage appears a third time, and the footer that says why an answer ended."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from jupyter_llm_manager.frontends.notebook.rendering import footer
from jupyter_llm_manager.generation import (
    PASSAGE_WORDS,
    AnswerFilter,
    GenerationParams,
    GenerationResult,
    RepeatedPassageStop,
    cut_at_repetition,
)

LOOP = ("L'Étoile, la Marseillaise, la femme, la femme au martyre, la femme au martyre, la femme au martyre, "
        "la femme au martyre, la femme au martyre")


def third_appearance(text: str) -> str | None:
    """The text before the earliest third appearance of a passage, found by brute force; ``None``: there is none."""
    words = [(m.group().casefold(), m.start()) for m in re.finditer(r"\w{1,64}", text)]
    seen: dict[tuple[str, ...], int] = {}
    for end in range(PASSAGE_WORDS, len(words) + 1):
        passage = tuple(word for word, _ in words[end - PASSAGE_WORDS:end])
        seen[passage] = seen.get(passage, 0) + 1
        if seen[passage] == 3:
            return text[: words[end - PASSAGE_WORDS][1]].rstrip()
    return None


def streamed(text: str, cuts: list[int]) -> tuple[list[str], RepeatedPassageStop]:
    """What a reader is shown of ``text`` arriving in pieces split at ``cuts``, the flush last."""
    stop = RepeatedPassageStop()
    bounds = [0, *sorted(set(cuts)), len(text)]
    shown = [stop.feed(text[a:b]) for a, b in itertools.pairwise(bounds)]
    return [*shown, stop.flush()], stop


def test_the_loop_from_the_issue_ends_before_the_third_appearance():
    text, stopped = cut_at_repetition(LOOP)
    assert stopped
    assert text == "L'Étoile, la Marseillaise, la femme, la femme au martyre, la femme au martyre,"
    assert third_appearance(text) is None and LOOP.startswith(text)


def test_case_and_punctuation_do_not_hide_a_loop_and_two_appearances_are_allowed():
    twice = "One two three four five six. one, two; THREE four five six!"
    assert cut_at_repetition(twice) == (twice, False)
    assert cut_at_repetition(twice + " One two three four five six") == (twice, True)


def test_passages_shorter_than_six_words_may_repeat():
    text = " ".join(f"The cat sat on the {thing}." for thing in ["mat", "sofa", "bed", "roof", "wall", "chair"])
    assert cut_at_repetition(text) == (text, False)


@given(st.lists(st.sampled_from(["a", "b", "c", "A", " ", ", ", "\n", "é", "xyz"]), max_size=80),
       st.lists(st.integers(0, 200), max_size=12))
def test_streaming_in_any_pieces_shows_what_the_whole_text_shows(tokens, cuts):
    text = "".join(tokens)
    pieces, stop = streamed(text, [c for c in cuts if c <= len(text)])
    expected = third_appearance(text)
    assert "".join(pieces) == stop.text == (text if expected is None else expected)
    assert stop.stopped is (expected is not None)
    assert cut_at_repetition(text) == (stop.text, stop.stopped)


def test_a_word_longer_than_sixty_four_letters_streams_without_waiting_for_its_end():
    stop = RepeatedPassageStop()
    shown = "".join(stop.feed("x" * 50) for _ in range(4))
    assert len(shown) >= 128  # held back: at most the run's last 64 letters
    assert shown + stop.flush() == "x" * 200


def test_the_filter_runs_stop_strings_and_the_repetition_stop_in_the_order_they_come():
    at_stop = AnswerFilter(["###"], repetition=True)
    shown = at_stop.feed("a b c d e f a b c d e f ### a b c d e f") + at_stop.flush()
    assert (shown, at_stop.reason) == ("a b c d e f a b c d e f ", "stop_string")
    looping = AnswerFilter(["###"], repetition=True)
    shown = looping.feed(LOOP + " ###") + looping.flush()
    assert looping.reason == "repetition" and shown == cut_at_repetition(LOOP)[0] == looping.text


def test_without_the_penalty_the_text_passes_untouched():
    raw = AnswerFilter([], repetition=False)
    assert raw.feed(LOOP) + raw.flush() == LOOP and raw.reason is None
    assert not GenerationParams(repetition_penalty=1.0).stops_on_repetition
    assert not GenerationParams().stops_on_repetition  # nothing set: a backend's default decides
    assert GenerationParams(repetition_penalty=1.1).stops_on_repetition


# -- why an answer ended -----------------------------------------------------------------------------

def result(reason, tokens: int = 256, limit: int | None = 256) -> GenerationResult:
    return GenerationResult("smollm2", "text", 10, tokens, 2.0, reason, max_new_tokens=limit)


def test_the_footer_says_where_the_token_limit_stopped_an_answer_and_the_flag_that_raises_it():
    assert footer(result("length")).endswith("stopped at the 256-token limit: -n to allow more")
    assert footer(result("length", 40, 40)).endswith("stopped at the 40-token limit: -n to allow more")
    assert "max_new_tokens= to allow more" in result("length").summary_str  # the Python API's words


def test_the_footer_says_when_a_repetition_stopped_an_answer():
    assert "stopped before a passage repeated a third time" in footer(result("repetition", 90))
    assert "repetition_penalty=1.0" in footer(result("repetition", 90))


@pytest.mark.parametrize("reason", ["stop", "stop_string"])
def test_an_answer_that_ended_by_itself_has_no_note(reason):
    assert footer(result(reason, 12)) == "smollm2 · 12 tokens · 2.00 s · 6.0 tok/s"
