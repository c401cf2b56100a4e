"""What a generation request and its result are, independent of any backend.

:class:`GenerationParams` validates parameters before anything runs, so a
negative token count or a temperature below zero is a clear error, not a
stack trace from deep inside a model. :class:`StopTextFilter` holds back text
that might be the start of a stop string while streaming;
:class:`RepeatedPassageStop` ends an answer before a passage appears a third
time; :class:`AnswerFilter` runs both for the local backends.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from .errors import InvalidGenerationParameters

__all__ = [
    "PASSAGE_WORDS",
    "ROLES",
    "AnswerFilter",
    "FinishReason",
    "GenerationParams",
    "GenerationResult",
    "Prompt",
    "RepeatedPassageStop",
    "StopTextFilter",
    "StreamInterrupted",
    "cut_at_repetition",
    "cut_at_stop",
    "normalize_prompt",
]

Message = Mapping[str, str]
Prompt = str | Sequence[Message]
#: ``repetition``: cut before a passage appeared a third time (:class:`RepeatedPassageStop`).
FinishReason = Literal["stop", "length", "stop_string", "repetition", "interrupted"]
#: An answer stops before a passage of this many words (or more) appears a third time.
PASSAGE_WORDS = 6

#: The roles a chat message may have.
ROLES = frozenset({"system", "user", "assistant", "tool", "developer"})


def _check(condition: bool, message: str) -> None:
    if not condition:
        raise InvalidGenerationParameters(message)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class GenerationParams:
    """Validated generation parameters; ``None`` means "the model's default".

    ``extra`` carries backend-specific keyword arguments (``-p KEY=VALUE`` in
    the magic) through unchanged.
    """

    max_new_tokens: int = 256
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    do_sample: bool | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    repetition_penalty: float | None = None
    extra: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    def __post_init__(self) -> None:
        _check(_is_int(self.max_new_tokens) and self.max_new_tokens > 0,
               f"max_new_tokens must be a positive integer, got {self.max_new_tokens!r}")
        if self.temperature is not None:
            _check(_is_number(self.temperature) and self.temperature >= 0,
                   f"temperature must be a number >= 0, got {self.temperature!r}")
        if self.top_p is not None:
            _check(_is_number(self.top_p) and 0 < self.top_p <= 1,
                   f"top_p must be in (0, 1], got {self.top_p!r}")
        if self.top_k is not None:
            _check(_is_int(self.top_k) and self.top_k >= 0,
                   f"top_k must be an integer >= 0, got {self.top_k!r}")
        if self.do_sample is not None:
            _check(isinstance(self.do_sample, bool), f"do_sample must be true or false, got {self.do_sample!r}")
        if self.seed is not None:
            _check(_is_int(self.seed) and self.seed >= 0, f"seed must be an integer >= 0, got {self.seed!r}")
        if self.repetition_penalty is not None:
            _check(_is_number(self.repetition_penalty) and self.repetition_penalty > 0,
                   f"repetition_penalty must be a number > 0, got {self.repetition_penalty!r}")
        _check(all(isinstance(s, str) and s for s in self.stop),
               f"stop must be a list of non-empty strings, got {list(self.stop)!r}")

    @classmethod
    def build(cls, *layers: Mapping[str, Any] | None) -> GenerationParams:
        """Merge layers (spec defaults first, call arguments last) and validate.

        Keys that are not parameters of this class go to ``extra``.
        """
        known = {f.name for f in fields(cls)} - {"extra"}
        merged: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for layer in layers:
            for key, value in (layer or {}).items():
                if key == "extra":
                    extra.update(value or {})
                elif key in known:
                    if value is not None:
                        merged[key] = value
                else:
                    extra[key] = value
        if "stop" in merged:
            stop = merged["stop"]
            merged["stop"] = (stop,) if isinstance(stop, str) else tuple(stop)
        return cls(**merged, extra=MappingProxyType(extra))

    @property
    def sampling(self) -> bool | None:
        """Whether to sample: explicit ``do_sample``, else temperature 0 is greedy."""
        if self.do_sample is not None:
            return self.do_sample
        if self.temperature is not None:
            return self.temperature > 0
        return None

    @property
    def penalized(self) -> bool:
        """Whether a repetition penalty applies, and with it the stop before a passage's third appearance.

        ``repetition_penalty=1.0`` turns both off: the model's raw output.
        """
        return self.repetition_penalty is not None and self.repetition_penalty != 1.0

    @property
    def stops_on_repetition(self) -> bool:
        """Whether the answer ends before a passage's third appearance: with the penalty, unless the call
        asks for at least ``min_new_tokens`` (which, like the end-of-text token, the stop then respects)."""
        return self.penalized and not self.extra.get("min_new_tokens")


@dataclass(frozen=True)
class GenerationResult:
    """One finished (or interrupted) answer and what it cost."""

    model_id: str
    text: str
    prompt_tokens: int
    completion_tokens: int
    seconds: float
    finish_reason: FinishReason = "stop"
    warnings: tuple[str, ...] = ()
    max_new_tokens: int | None = None  # the token limit it ran under (lowered where the context rule did)
    context_limited: bool = False  # the context rule lowered that limit: more tokens would not fit
    served_by: str | None = None  # where it ran, when not in this process: the notebook (or "pid N") lending its copy

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    def finish_note(self, *, more_tokens: str = "max_new_tokens=", let_run: str = "repetition_penalty=1.0") -> str:
        """Why the answer ended, where a reader should know; ``more_tokens`` and ``let_run`` say how to change it.

        ``stopped at the 256-token limit: max_new_tokens= to allow more``; empty
        for an answer that ended by itself.
        """
        if self.finish_reason == "length":
            limit = self.max_new_tokens or self.completion_tokens
            if self.context_limited:
                return f"stopped at the end of the context ({limit} new tokens fit): a shorter prompt allows more"
            return f"stopped at the {limit}-token limit: {more_tokens} to allow more"
        if self.finish_reason == "repetition":
            return f"stopped before a passage repeated a third time: {let_run} to let it run"
        if self.finish_reason == "interrupted":
            return "interrupted"
        return ""

    def summary(self, *, more_tokens: str = "max_new_tokens=", let_run: str = "repetition_penalty=1.0") -> str:
        """``model · 20 tokens · 0.41 s · 48.8 tok/s``, then :meth:`finish_note`: the footer of an answer."""
        text = (f"{self.model_id} · {self.completion_tokens} tokens · {self.seconds:.2f} s · "
                f"{self.tokens_per_second:.1f} tok/s")
        if self.served_by:
            text += f" · on the copy in {self.served_by}"
        note = self.finish_note(more_tokens=more_tokens, let_run=let_run)
        return f"{text} · {note}" if note else text

    @property
    def summary_str(self) -> str:
        """:meth:`summary` in the words of the Python API, for footers."""
        return self.summary()

    def __str__(self) -> str:
        return self.text

    def _repr_markdown_(self) -> str:
        """In a notebook: the answer, and its cost in small print."""
        return f"{self.text}\n\n<sub>{self.summary_str}</sub>"


class StreamInterrupted(KeyboardInterrupt):
    """Ctrl-C during a stream, raised by a backend that stopped cleanly: ``result`` says what was made."""

    def __init__(self, result: GenerationResult) -> None:
        super().__init__("interrupted")
        self.result = result


def normalize_prompt(prompt: Prompt, *, system: str | None = None) -> str | list[dict[str, str]]:
    """Check a prompt and return it as a string or a fresh list of messages.

    A system text, when given, is put first (messages) and ignored for raw
    strings by the caller's choice. An empty prompt is an error.
    """
    if isinstance(prompt, bytes):
        raise InvalidGenerationParameters("the prompt must be text (str), not bytes: decode it first")
    if isinstance(prompt, str):
        _check(bool(prompt.strip()), "the prompt is empty: write some text to send to the model")
        _check_unicode(prompt, "the prompt")
        if system:
            return [{"role": "system", "content": system}, {"role": "user", "content": prompt}]
        return prompt
    _check(isinstance(prompt, Iterable), f"a prompt is a string or a list of messages, got {type(prompt).__name__}")
    messages = []
    for index, message in enumerate(prompt):
        _check(isinstance(message, Mapping) and isinstance(message.get("content"), str),
               f"message {index} must be a mapping with 'role' and 'content' strings, got {message!r}")
        _check_unicode(message["content"], f"message {index}")
        role = message.get("role")
        if not isinstance(role, str) or role not in ROLES:
            raise InvalidGenerationParameters(f"message {index} has role {role!r}; use one of {sorted(ROLES)}")
        messages.append({"role": role, "content": message["content"]})
    _check(bool(messages), "the prompt has no messages")
    if system and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": system})
    return messages


def _check_unicode(text: str, what: str) -> None:
    """Lone surrogates (binary data decoded with surrogateescape) cannot reach a tokenizer."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InvalidGenerationParameters(
            f"{what} is not valid Unicode text at position {error.start} (a lone surrogate, as binary data "
            "decoded with errors='surrogateescape' leaves): clean it with "
            "text.encode('utf-8', 'replace').decode('utf-8')") from None


def cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    """Text up to the earliest stop string, and whether one was found."""
    positions = [i for i in (text.find(s) for s in stops) if i >= 0]
    if not positions:
        return text, False
    return text[: min(positions)], True


class StopTextFilter:
    """Streams text while holding back what might be the start of a stop string."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.stopped = False
        self._pending = ""
        self._shown: list[str] = []

    @property
    def text(self) -> str:
        """Everything shown so far."""
        return "".join(self._shown)

    def feed(self, piece: str) -> str:
        """Return the part of ``piece`` that is safe to show now."""
        if self.stopped:
            return ""
        self._pending += piece
        text, found = cut_at_stop(self._pending, self.stops)
        if found:
            self.stopped, self._pending = True, ""
            return self._show(text)
        hold = self._held_suffix_length(self._pending)
        ready, self._pending = self._pending[: len(self._pending) - hold], self._pending[len(self._pending) - hold:]
        return self._show(ready)

    def flush(self) -> str:
        """What was held back, once the stream has ended without a stop string."""
        rest, self._pending = self._pending, ""
        return "" if self.stopped else self._show(rest)

    def _show(self, text: str) -> str:
        if text:
            self._shown.append(text)
        return text

    def _held_suffix_length(self, text: str) -> int:
        longest = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(text)), longest, -1):
                if stop.startswith(text[-size:]):
                    longest = size
                    break
        return longest


#: A word: letters and digits, up to 64 of them (a longer run counts as several words, so a stream of one long
#: "word" is never held back whole).
_WORD = re.compile(r"\w{1,64}")
_ALLOWED_TIMES = 2  # a passage may appear twice; the answer ends before its third appearance


class RepeatedPassageStop:
    """Streams an answer until a passage of :data:`PASSAGE_WORDS` words (or more) would appear a third time.

    Words are runs of letters and digits compared without case, so commas
    and capitals do not hide a loop; appearances may overlap (a loop of four
    words repeats each six-word passage in it every four words). Text that
    could still become the start of a third appearance is held back until it
    cannot, so what was shown is never taken back: the answer is cut just
    before that appearance, and :attr:`text` is what was shown.
    """

    def __init__(self, words: int = PASSAGE_WORDS) -> None:
        self.size = words
        self.stopped = False
        self._text = ""  # everything received
        self._shown = 0  # how much of it was handed out
        self._scanned = 0  # where the next word may begin
        self._words: list[str] = []
        self._starts: list[int] = []  # where each word begins in the text
        self._counts: dict[tuple[str, ...], int] = {}  # appearances of every run of 1 to ``size`` words
        self._cut: int | None = None

    @property
    def text(self) -> str:
        """Everything shown so far (after a stop: the answer up to the cut)."""
        return self._text[: self._shown]

    def feed(self, piece: str) -> str:
        """Return the part of ``piece`` (and of what was held back) that is safe to show now."""
        if self.stopped:
            return ""
        self._text += piece
        self._read_words(final=False)
        return self._release(self._held_from())

    def flush(self) -> str:
        """What was held back, once the answer has ended (its last word may still complete a third appearance)."""
        if self.stopped:
            return ""
        self._read_words(final=True)
        return self._release(len(self._text))

    def _read_words(self, final: bool) -> None:
        """Count the words completed since the last call; a word at the very end may go on, unless ``final``."""
        for match in _WORD.finditer(self._text, self._scanned):
            if match.end() == len(self._text) and not final:
                return
            self._scanned = match.end()
            self._count(match.group().casefold(), match.start())
            if self._cut is not None:
                return

    def _count(self, word: str, start: int) -> None:
        self._words.append(word)
        self._starts.append(start)
        total = len(self._words)
        for size in range(1, min(self.size, total) + 1):
            run = tuple(self._words[total - size:])
            self._counts[run] = self._counts.get(run, 0) + 1
            if size == self.size and self._counts[run] > _ALLOWED_TIMES:
                self._cut = self._before(self._starts[total - size])

    def _held_from(self) -> int:
        """Where the text that must wait begins: trailing space, a word still being written, and the
        latest words when they already appeared twice before (they may begin a third appearance)."""
        held = len(self._text)
        while held > self._shown and self._text[held - 1].isspace():
            held -= 1
        if self._scanned < len(self._text):
            partial = _WORD.search(self._text, self._scanned)
            if partial is not None and partial.end() == len(self._text):
                held = min(held, self._before(partial.start()))
        total = len(self._words)
        for size in range(1, min(self.size - 1, total) + 1):
            if self._counts.get(tuple(self._words[total - size:]), 0) <= _ALLOWED_TIMES:
                break  # a longer run ending here cannot have appeared more often than this one
            held = min(held, self._before(self._starts[total - size]))
        return held

    def _before(self, start: int) -> int:
        """``start`` moved back over the spaces before it: the cut leaves no trailing space."""
        while start > self._shown and self._text[start - 1].isspace():
            start -= 1
        return start

    def _release(self, end: int) -> str:
        """Hand out the text up to ``end``, or up to the cut once there is one."""
        if self._cut is not None:
            self.stopped, end = True, self._cut
        end = max(end, self._shown)
        piece, self._shown = self._text[self._shown:end], end
        return piece


def cut_at_repetition(text: str) -> tuple[str, bool]:
    """``text`` up to where a passage of :data:`PASSAGE_WORDS` words would appear a third time, and whether it does."""
    stop = RepeatedPassageStop()
    shown = stop.feed(text) + stop.flush()
    return shown, stop.stopped


class AnswerFilter:
    """What a reader sees of an answer as it streams: cut at a stop string, or before a passage's third appearance.

    The repetition stop belongs to the repetition penalty: with
    ``repetition_penalty=1.0`` (``repetition=False``) the text passes untouched
    but for stop strings.
    """

    def __init__(self, stops: Sequence[str], *, repetition: bool) -> None:
        self._stops = StopTextFilter(stops)
        self._repeats = RepeatedPassageStop() if repetition else None

    @property
    def stopped(self) -> bool:
        """Whether the answer has ended here: generation can stop."""
        return self._stops.stopped or (self._repeats is not None and self._repeats.stopped)

    @property
    def reason(self) -> FinishReason | None:
        """``repetition`` or ``stop_string`` once stopped; ``None`` while the answer may go on."""
        if self._repeats is not None and self._repeats.stopped:
            return "repetition"
        return "stop_string" if self._stops.stopped else None

    @property
    def text(self) -> str:
        """Everything shown so far."""
        return self._repeats.text if self._repeats is not None else self._stops.text

    def feed(self, piece: str) -> str:
        """Return the part of ``piece`` that is safe to show now."""
        shown = self._stops.feed(piece)
        if self._repeats is None:
            return shown
        if self._stops.stopped:  # the answer ends at the stop string: its last word is complete
            return self._repeats.feed(shown) + self._repeats.flush()
        return self._repeats.feed(shown)

    def flush(self) -> str:
        """What was held back, once the stream has ended."""
        rest = self._stops.flush()
        if self._repeats is None:
            return rest
        return self._repeats.feed(rest) + self._repeats.flush()
