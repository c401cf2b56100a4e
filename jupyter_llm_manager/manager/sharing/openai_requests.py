"""OpenAI request bodies read into an :class:`~.answering.AnswerRequest`, every field checked, one line per mistake.

What is taken, by OpenAI's names: ``model``; ``messages`` (chat: roles
``system``, ``user``, ``assistant``, and ``developer`` read as ``system``;
content a string or a list of text parts) or ``prompt`` (completions: a string,
or a list of one string; sent raw, without the chat template);
``max_completion_tokens`` / ``max_tokens`` -> ``max_new_tokens``;
``temperature``, ``top_p``, ``seed``, ``stop`` (a string or a list); the
extensions ``top_k`` and ``repetition_penalty``; ``stream`` and
``stream_options.include_usage``; the ``"jupyter_llm_manager"`` object,
passed on untouched (its ``raw`` and ``requester``, when a borrowing member
sends them, also set the request's).

What is refused (400), because answering it would be a different answer than
the client asked for: ``n`` or ``best_of`` other than 1, non-zero
``frequency_penalty`` / ``presence_penalty`` (use ``repetition_penalty``),
``logprobs``, ``logit_bias``, ``tools`` / ``functions``, a ``response_format``
other than text, ``echo``, ``suffix``, and token arrays as prompts or inputs.
Other fields (``user``, ``metadata``, ``store`` ...) are ignored, as local
servers do.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...errors import InvalidGenerationParameters
from ...generation import ROLES as MANAGER_ROLES
from ...generation import GenerationParams
from .answering import AnswerRequest
from .protocol import EXTENSION

__all__ = ["BadRequest", "EmbeddingRequest", "TextRequest", "chat_request", "completion_request",
           "embedding_request"]

#: The most stop strings one request may set.
MAX_STOPS = 16
#: The most messages of one chat request.
MAX_MESSAGES = 4096
_ROLES = {"system": "system", "developer": "system", "user": "user", "assistant": "assistant"}


class BadRequest(ValueError):
    """A request the routes refuse with 400: what is wrong, in one line, and the field (``param``)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class TextRequest:
    """A chat or completion request: what to answer, and how the client wants it sent."""

    answer: AnswerRequest
    stream: bool
    include_usage: bool


@dataclass(frozen=True)
class EmbeddingRequest:
    model: str
    texts: list[str]
    base64: bool
    extension: Mapping[str, Any]  # a borrowing member's: who asks, how long it may wait


def chat_request(body: Mapping[str, Any], requester: str) -> TextRequest:
    """A ``/v1/chat/completions`` body read (:class:`BadRequest` says what is wrong). A borrowing member's
    messages (its exact parameters in the extension) keep their roles as its own manager took them."""
    extension = body.get(EXTENSION)
    exact = isinstance(extension, Mapping) and isinstance(extension.get("params"), Mapping)
    return _text_request(body, _messages(body.get("messages"), keep_roles=exact), raw=False, requester=requester)


def completion_request(body: Mapping[str, Any], requester: str) -> TextRequest:
    """A ``/v1/completions`` body read: the prompt is sent raw, without the chat template."""
    for name in ("echo", "suffix"):
        if body.get(name):
            raise BadRequest(f"{name} is not supported", name)
    if not _is_one(body.get("best_of")):
        raise BadRequest("best_of must be 1: one answer per request", "best_of")
    return _text_request(body, _prompt(body.get("prompt")), raw=True, requester=requester)


def embedding_request(body: Mapping[str, Any]) -> EmbeddingRequest:
    """A ``/v1/embeddings`` body read: texts, and whether vectors go back as base64."""
    model = _model(body)
    found = body.get("input")
    texts = [found] if isinstance(found, str) else found
    if not isinstance(texts, list) or not all(isinstance(text, str) for text in texts):
        raise BadRequest("input must be a string or a list of strings (token arrays are not supported)", "input")
    encoding = body.get("encoding_format", "float")
    if encoding not in ("float", "base64", None):
        raise BadRequest(f"encoding_format must be 'float' or 'base64', got {_short(encoding)}", "encoding_format")
    if body.get("dimensions") is not None:
        raise BadRequest("dimensions is not supported: the model's vectors have their own size", "dimensions")
    extension = body.get(EXTENSION, {})
    if not isinstance(extension, Mapping):
        raise BadRequest(f"{EXTENSION} must be an object", EXTENSION)
    return EmbeddingRequest(model, texts, encoding == "base64", extension)


def _text_request(body: Mapping[str, Any], prompt: Any, *, raw: bool, requester: str) -> TextRequest:
    model = _model(body)
    _refuse_unsupported(body)
    params = _params(body)
    _check_ranges(params, body)
    extension = body.get(EXTENSION, {})
    if not isinstance(extension, Mapping):
        raise BadRequest(f"{EXTENSION} must be an object", EXTENSION)
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise BadRequest("stream must be true or false", "stream")
    options = body.get("stream_options") or {}
    if not isinstance(options, Mapping) or not isinstance(options.get("include_usage", False), bool):
        raise BadRequest("stream_options must be an object with include_usage true or false", "stream_options")
    named = extension.get("requester")
    exact_raw = extension.get("raw")  # a borrower's string prompt may go through the chat template (raw false)
    answer = AnswerRequest(model, prompt, exact_raw if isinstance(exact_raw, bool) else raw, params, extension,
                           named[:200] if isinstance(named, str) and named else requester)
    return TextRequest(answer, bool(stream), bool(stream and options.get("include_usage")))


def _check_ranges(params: Mapping[str, Any], body: Mapping[str, Any]) -> None:
    """Each parameter's range, then the whole, checked before anything is asked of the model; a 400 names the
    field the client set (``max_tokens`` or ``max_completion_tokens`` for ``max_new_tokens``)."""
    limit_field = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    for name, value in params.items():
        try:
            GenerationParams.build({name: value})
        except InvalidGenerationParameters as error:
            raise BadRequest(str(error), limit_field if name == "max_new_tokens" else name) from None
    try:
        GenerationParams.build(params)
    except InvalidGenerationParameters as error:
        raise BadRequest(str(error)) from None


def _is_one(value: Any) -> bool:
    """Unset, or the integer 1 (``true`` is not a count)."""
    return value is None or (type(value) is int and value == 1)


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model.strip() or len(model) > 500:
        raise BadRequest("model must be a model's id (a non-empty string)", "model")
    return model


def _refuse_unsupported(body: Mapping[str, Any]) -> None:
    """Fields whose answer would differ from what the client asked: a clear 400, never silently ignored."""
    if not _is_one(body.get("n")):
        raise BadRequest("n must be 1: one answer per request", "n")
    for name in ("frequency_penalty", "presence_penalty"):
        if body.get(name) is not None and (isinstance(body[name], bool) or body[name] != 0):
            raise BadRequest(f"{name} is not supported: use repetition_penalty (an extension) instead", name)
    for name in ("logprobs", "top_logprobs", "logit_bias", "tools", "functions", "tool_choice", "function_call"):
        if body.get(name) not in (None, False, [], {}, "none"):
            raise BadRequest(f"{name} is not supported", name)
    response_format = body.get("response_format")
    if response_format not in (None, {}) and response_format != {"type": "text"}:
        raise BadRequest("response_format other than text is not supported", "response_format")


def _params(body: Mapping[str, Any]) -> dict[str, Any]:
    """Generation keywords by :class:`GenerationParams` names, from the OpenAI fields that were set."""
    params: dict[str, Any] = {}
    limit = body.get("max_completion_tokens")
    name = "max_completion_tokens"
    if limit is None:
        limit, name = body.get("max_tokens"), "max_tokens"
    if limit is not None:
        params["max_new_tokens"] = _integer(limit, name, low=1)
    for field in ("temperature", "top_p", "repetition_penalty"):
        if body.get(field) is not None:
            params[field] = _number(body[field], field)
    for field in ("seed", "top_k"):
        if body.get(field) is not None:
            params[field] = _integer(body[field], field, low=0)
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else stop
        if not isinstance(stops, list) or len(stops) > MAX_STOPS or not all(isinstance(s, str) and s for s in stops):
            raise BadRequest(f"stop must be a string or a list of at most {MAX_STOPS} non-empty strings", "stop")
        if stops:
            params["stop"] = stops
    return params


def _integer(value: Any, name: str, *, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise BadRequest(f"{name} must be an integer >= {low}, got {_short(value)}", name)
    return value


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name} must be a number, got {_short(value)}", name)
    return value


def _messages(found: Any, *, keep_roles: bool = False) -> list[dict[str, str]]:
    """Chat messages: OpenAI's roles (``developer`` read as ``system``), or with ``keep_roles`` every role the
    manager takes, unchanged (a borrower's own messages)."""
    if not isinstance(found, list) or not found:
        raise BadRequest("messages must be a non-empty list of {role, content} objects", "messages")
    if len(found) > MAX_MESSAGES:
        raise BadRequest(f"messages holds at most {MAX_MESSAGES} messages", "messages")
    roles = {role: role for role in MANAGER_ROLES} if keep_roles else _ROLES
    messages = []
    for index, message in enumerate(found):
        where = f"messages[{index}]"
        if not isinstance(message, Mapping):
            raise BadRequest(f"{where} must be an object with role and content", where)
        role = message.get("role")
        if not isinstance(role, str) or role not in roles:
            raise BadRequest(f"{where}.role must be one of {', '.join(sorted(roles))}, got {_short(role)}",
                             f"{where}.role")
        messages.append({"role": roles[role], "content": _content(message.get("content"), f"{where}.content")})
    return messages


def _content(content: Any, where: str) -> str:
    """A message's text: a string, or a list of text parts joined by newlines (images and audio are refused)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content:
        texts = [part.get("text") for part in content if isinstance(part, Mapping) and part.get("type") == "text"]
        if len(texts) == len(content) and all(isinstance(text, str) for text in texts):
            return "\n".join(str(text) for text in texts)
    raise BadRequest(f"{where} must be a string or a list of text parts ({{type: text, text}})", where)


def _prompt(found: Any) -> str:
    prompt = found[0] if isinstance(found, list) and len(found) == 1 else found
    if not isinstance(prompt, str) or not prompt:
        raise BadRequest("prompt must be a non-empty string, or a list of one (token arrays and batches are not "
                         "supported)", "prompt")
    return prompt


def _short(value: Any) -> str:
    """A client's value in a message, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
