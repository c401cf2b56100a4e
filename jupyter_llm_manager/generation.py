"""What a generation request and its result are, independent of any backend.

:class:`GenerationParams` validates parameters before anything runs, so a
negative token count or a temperature below zero is a clear error, not a
stack trace from deep inside a model. :class:`StopTextFilter` holds back text
that might be the start of a stop string while streaming.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Literal

from .errors import InvalidGenerationParameters

__all__ = [
    "FinishReason",
    "GenerationParams",
    "GenerationResult",
    "Prompt",
    "StopTextFilter",
    "StreamInterrupted",
    "cut_at_stop",
    "normalize_prompt",
]

Message = Mapping[str, str]
Prompt = str | Sequence[Message]
FinishReason = Literal["stop", "length", "stop_string", "interrupted"]

_ROLES = {"system", "user", "assistant", "tool", "developer"}


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

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / self.seconds if self.seconds > 0 else 0.0

    @property
    def summary_str(self) -> str:
        """``model · 20 tokens · 0.41 s · 48.8 tok/s``, for footers."""
        text = (f"{self.model_id} · {self.completion_tokens} tokens · {self.seconds:.2f} s · "
                f"{self.tokens_per_second:.1f} tok/s")
        if self.finish_reason == "interrupted":
            text += " · interrupted"
        return text

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
        if not isinstance(role, str) or role not in _ROLES:
            raise InvalidGenerationParameters(f"message {index} has role {role!r}; use one of {sorted(_ROLES)}")
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
