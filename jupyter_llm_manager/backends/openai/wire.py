"""What an OpenAI-compatible server sends back, read within bounds and checked field by field.

The server is not trusted: it may stream without end, stall while sending
keep-alive bytes, send lines without end, or put any JSON value in any field.
So every read here is bounded (bytes, line length, time without answer data)
and every field is checked before it is used; what was wrong raises
:class:`BadAnswer` or :class:`SlowAnswer`, whose texts quote the server only
through bounded excerpts. The backend turns them into
:class:`~jupyter_llm_manager.errors.GenerationError` messages.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ...support.units import brief, excerpt, format_bytes

__all__ = ["DONE", "MAX_LINE_BYTES", "BadAnswer", "Facts", "SlowAnswer", "Usage", "chunk_facts",
           "completion_facts", "event_data", "parse_json", "read_json", "served_ids"]

#: The data of the event that ends a stream.
DONE = "[DONE]"
#: The longest line an event may have (a chunk is a few hundred bytes; a model list a few MB in one body).
MAX_LINE_BYTES = 1 << 20

Clock = Callable[[], float]


class BadAnswer(ValueError):
    """What the server sent is not an OpenAI-compatible answer; the text says how (a phrase after the URL)."""


class SlowAnswer(TimeoutError):
    """The server kept the connection busy without answer data (keep-alive bytes only) for too long."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        super().__init__(f"sent no answer data for {seconds:g} s")


@dataclass(frozen=True)
class Usage:
    """Token counts as the server reports them (``None``: not reported)."""

    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True)
class Facts:
    """What one chunk (or one whole answer) says: its text, why it finished, what it cost."""

    text: str
    finish: str | None = None
    usage: Usage | None = None


# -- bytes -> events ------------------------------------------------------------------------------

def event_data(blocks: Iterable[bytes], *, max_bytes: int, quiet_s: float,
               clock: Clock = time.monotonic) -> Iterator[str]:
    """The data of each server-sent event in ``blocks``, until the bytes end.

    Comments and other fields (keep-alives, ``event:``, ``id:``) carry no
    answer: they count toward ``max_bytes`` and do not reset the ``quiet_s``
    clock, which runs only while this waits on the server (not while the
    caller holds an event).
    """
    buffer, total = b"", 0
    lines: list[bytes] = []  # the data lines of the event being read
    last_data = clock()
    for block in blocks:
        total += len(block)
        if total > max_bytes:
            raise BadAnswer(f"sent more than {format_bytes(max_bytes)} for one answer without finishing")
        if clock() - last_data > quiet_s:
            raise SlowAnswer(quiet_s)
        *complete, buffer = (buffer + block).split(b"\n")
        if len(buffer) > MAX_LINE_BYTES:
            raise BadAnswer(f"sent a line longer than {format_bytes(MAX_LINE_BYTES)}")
        for line in complete:
            data = _event_end(line.rstrip(b"\r"), lines)
            if data is not None:
                yield data
                last_data = clock()
    last = buffer.rstrip(b"\r")
    if last:
        _event_end(last, lines)  # a last line without its newline still counts
    data = _event_end(b"", lines)
    if data is not None:
        yield data


def _event_end(line: bytes, lines: list[bytes]) -> str | None:
    """Take one line of an event stream; at the blank line that ends an event, its data (else ``None``)."""
    if line.startswith(b"data:"):
        lines.append(line[5:].removeprefix(b" "))
        return None
    if line or not lines:
        return None  # another field, a comment, or a blank line after nothing
    data = b"\n".join(lines).decode("utf-8", errors="replace")
    lines.clear()
    return data if data.strip() else None  # an empty event carries nothing, like a keep-alive


def read_json(blocks: Iterable[bytes], *, max_bytes: int, within_s: float, what: str,
              clock: Clock = time.monotonic) -> Any:
    """A whole JSON body of at most ``max_bytes``, received within ``within_s`` seconds of the first byte."""
    started, total = clock(), 0
    parts: list[bytes] = []
    for block in blocks:
        total += len(block)
        if total > max_bytes:
            raise BadAnswer(f"sent more than {format_bytes(max_bytes)} as {what}")
        if clock() - started > within_s:
            raise SlowAnswer(within_s)
        parts.append(block)
    return parse_json(b"".join(parts).decode("utf-8", errors="replace"), what)


def parse_json(text: str, what: str) -> Any:
    """``text`` as JSON, else :class:`BadAnswer` quoting its start and end."""
    try:
        return json.loads(text)
    except ValueError:  # also numbers longer than Python converts
        raise BadAnswer(f"sent {what} that is not JSON: {excerpt(text.strip(), 120)!r}") from None


# -- events -> facts ------------------------------------------------------------------------------

def chunk_facts(data: Any, *, raw: bool) -> Facts:
    """The facts of one streamed chunk (``chat.completion.chunk``, or a completion chunk when ``raw``)."""
    _check_object(data, "a chunk")
    usage = _usage(data.get("usage"))
    choices = data.get("choices")
    if choices is None and usage is not None:
        return Facts("", None, usage)  # a usage-only chunk
    if not isinstance(choices, list):
        raise BadAnswer(f"sent a chunk without a list of choices: {brief(data)}")
    if not choices:
        return Facts("", None, usage)
    choice = _choice(choices[0], "a chunk")
    finish = _finish(choice)
    if raw:
        return Facts(_text(choice.get("text"), "a chunk"), finish, usage)
    delta = choice.get("delta", {} if finish is not None else None)
    if not isinstance(delta, dict):
        raise BadAnswer(f"sent a chunk whose delta is not an object: {brief(delta)}")
    return Facts(_text(delta.get("content"), "a chunk"), finish, usage)


def completion_facts(data: Any, *, raw: bool) -> Facts:
    """The facts of a whole answer (``chat.completion``, or a completion when ``raw``)."""
    _check_object(data, "an answer")
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices:
        raise BadAnswer(f"sent an answer without choices: {brief(data)}")
    choice = _choice(choices[0], "an answer")
    if raw:
        text = choice.get("text")
    else:
        message = choice.get("message")
        if not isinstance(message, dict):
            raise BadAnswer(f"sent an answer whose message is not an object: {brief(message)}")
        text = message.get("content")
    return Facts(_text(text, "an answer"), _finish(choice), _usage(data.get("usage")))


def served_ids(data: Any) -> list[str]:
    """The model ids of a ``/models`` answer."""
    _check_object(data, "a model list")
    models = data.get("data")
    if not isinstance(models, list):
        raise BadAnswer(f"sent a model list without a data list: {brief(data)}")
    ids = []
    for model in models:
        name = model.get("id") if isinstance(model, dict) else None
        if not isinstance(name, str):
            raise BadAnswer(f"sent a model list with an entry that has no id: {brief(model)}")
        ids.append(name)
    return ids


def _check_object(data: Any, what: str) -> None:
    """``data`` is a JSON object, and not the error object a server may send instead of an answer."""
    if not isinstance(data, dict):
        raise BadAnswer(f"sent {what} that is not a JSON object: {brief(data)}")
    error = data.get("error")
    if error:
        said = error.get("message") if isinstance(error, dict) else error
        text = said if isinstance(said, str) else brief(said)
        raise BadAnswer(f"reported an error instead of {what}: {excerpt(text, 300)}")


def _choice(choice: Any, what: str) -> dict[str, Any]:
    if not isinstance(choice, dict):
        raise BadAnswer(f"sent {what} whose choice is not an object: {brief(choice)}")
    return choice


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadAnswer(f"sent {what} whose content is not text: {brief(value)}")
    return value


def _finish(choice: dict[str, Any]) -> str | None:
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise BadAnswer(f"sent a finish_reason that is not text: {brief(finish)}")
    return finish


def _usage(value: Any) -> Usage | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise BadAnswer(f"sent usage that is not an object: {brief(value)}")
    counts = [value.get("prompt_tokens"), value.get("completion_tokens")]
    for count in counts:
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            raise BadAnswer(f"sent a token count that is not a whole number: {brief(count)}")
    return Usage(*counts)
