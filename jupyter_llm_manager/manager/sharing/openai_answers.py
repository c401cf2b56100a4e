"""The OpenAI objects the routes answer with: completions, chunks, embeddings, errors. Pure: data in, dicts out.

Every answer carries the generation's own result in the extension object
(``"jupyter_llm_manager": {"result": ...}``, :func:`~.protocol.result_to`):
a borrowing member reads its exact facts back; other clients ignore it.
"""

from __future__ import annotations

import base64
import struct
import time
import uuid
from collections.abc import Sequence
from typing import Any

from ...errors import (
    InvalidGenerationParameters,
    LLMManagerError,
    ModelNotFoundError,
    ResourceNotAvailableError,
    WrongModelKind,
)
from ...generation import GenerationResult
from .protocol import EXTENSION, result_to

__all__ = ["Answer", "embeddings", "error_body", "error_status", "finish_reason"]

_STATUS: tuple[tuple[type[BaseException], int], ...] = (
    (ModelNotFoundError, 404), (InvalidGenerationParameters, 400), (WrongModelKind, 400), (ResourceNotAvailableError, 503),
    (LLMManagerError, 500))


def error_body(message: str, kind: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """OpenAI's error object."""
    return {"error": {"message": message, "type": kind, "code": code, "param": param}}


def error_status(error: BaseException) -> int:
    """The HTTP status of one of the project's errors (500 for anything else)."""
    return next((status for kind, status in _STATUS if isinstance(error, kind)), 500)


def finish_reason(result: GenerationResult | None) -> str:
    """OpenAI's finish reason: ``length`` when the token limit ended it, ``stop`` for every other end."""
    return "length" if result is not None and result.finish_reason == "length" else "stop"


def usage(result: GenerationResult | None) -> dict[str, int]:
    prompt = result.prompt_tokens if result else 0
    completion = result.completion_tokens if result else 0
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def extension(result: GenerationResult | None) -> dict[str, Any]:
    return {EXTENSION: {"result": result_to(result)}} if result is not None else {}


class Answer:
    """The objects of one chat (``chat=True``) or completion answer, all with one id and creation time."""

    def __init__(self, model: str, *, chat: bool) -> None:
        self.model = model
        self.chat = chat
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())

    def _object(self, kind: str, choices: list[dict[str, Any]]) -> dict[str, Any]:
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": choices}

    def whole(self, text: str, result: GenerationResult | None) -> dict[str, Any]:
        """The non-streaming answer: ``chat.completion`` or ``text_completion``, with usage."""
        if self.chat:
            choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": text}}
        else:
            choice = {"index": 0, "text": text}
        choice.update(logprobs=None, finish_reason=finish_reason(result))
        kind = "chat.completion" if self.chat else "text_completion"
        return {**self._object(kind, [choice]), "usage": usage(result), **extension(result)}

    def _chunk(self, delta: dict[str, Any] | str, finish: str | None) -> dict[str, Any]:
        if self.chat:
            return self._object("chat.completion.chunk",
                                [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}])
        return self._object("text_completion", [{"index": 0, "text": delta, "logprobs": None, "finish_reason": finish}])

    def opening(self) -> dict[str, Any] | None:
        """The first chunk of a chat stream (the role); completions have none."""
        return self._chunk({"role": "assistant", "content": ""}, None) if self.chat else None

    def piece(self, text: str) -> dict[str, Any]:
        return self._chunk({"content": text} if self.chat else text, None)

    def closing(self, result: GenerationResult | None) -> dict[str, Any]:
        """The chunk with the finish reason, and the result in the extension."""
        return {**self._chunk({} if self.chat else "", finish_reason(result)), **extension(result)}

    def usage_chunk(self, result: GenerationResult | None) -> dict[str, Any]:
        """The chunk ``stream_options.include_usage`` asks for: no choices, the usage."""
        kind = "chat.completion.chunk" if self.chat else "text_completion"
        return {**self._object(kind, []), "usage": usage(result)}


def embeddings(model: str, vectors: Sequence[Sequence[float]], *, as_base64: bool) -> dict[str, Any]:
    """The ``/v1/embeddings`` answer; base64 is little-endian float32, as OpenAI sends it. Tokens are not
    counted by the embedding call, so usage says 0."""
    data = [{"object": "embedding", "index": index,
             "embedding": _base64(vector) if as_base64 else [float(value) for value in vector]}
            for index, vector in enumerate(vectors)]
    return {"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": 0, "total_tokens": 0}}


def _base64(vector: Sequence[float]) -> str:
    return base64.b64encode(struct.pack(f"<{len(vector)}f", *vector)).decode("ascii")
