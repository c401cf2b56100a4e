"""What an OpenAI-compatible server answers from: one request, and the part that answers it.

Two servers speak the same wire format (:mod:`.openai_routes`): a member's
private socket, where other members borrow the copies this manager holds
(:mod:`.lending`), and ``jupyter-llm-manager serve``, where other tools ask a
manager of their own (:mod:`.serving`). The routes parse and stream; an
:class:`Answering` decides what runs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from ...generation import GenerationResult, Prompt

__all__ = ["AnswerRequest", "Answering", "PieceStream"]


@dataclass(frozen=True)
class AnswerRequest:
    """One chat or completion request, read off the wire.

    ``params`` are generation keywords by :class:`~jupyter_llm_manager.generation.GenerationParams` field names
    (``max_new_tokens``, ``temperature``, ``stop`` ...), taken from the OpenAI fields the client sent;
    ``extension`` is the request's ``"jupyter_llm_manager"`` object (``{}`` when absent): a borrowing member's
    exact parameters, which win over ``params``.
    """

    model: str
    prompt: Prompt
    raw: bool
    params: Mapping[str, Any] = field(default_factory=dict)
    extension: Mapping[str, Any] = field(default_factory=dict)
    requester: str = "a client"


class PieceStream(Protocol):
    """Text pieces as they are made (blocking; iterated on a worker thread), ``stop()`` from any thread ends it
    within a token, ``close()`` releases it, ``result`` once done. :class:`~..generations.TextStream` is one."""

    @property
    def result(self) -> GenerationResult | None: ...

    def __iter__(self) -> Iterator[str]: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


class Answering(Protocol):
    """What a server answers from. Errors are the project's own exceptions, mapped to HTTP by the routes:
    :class:`~jupyter_llm_manager.errors.ModelNotFoundError` 404, :class:`~jupyter_llm_manager.errors.
    InvalidGenerationParameters` 400, :class:`~jupyter_llm_manager.errors.ResourceNotAvailableError` 503,
    any other :class:`~jupyter_llm_manager.errors.LLMManagerError` 500, each with its class name as the type."""

    def models(self) -> list[dict[str, Any]]:
        """The models to list in ``/v1/models`` (OpenAI model objects: ``id``, ``object``, ``owned_by`` ...)."""
        ...

    def stream(self, request: AnswerRequest) -> PieceStream:
        """The answer's stream; raises before the first piece when it cannot run at all."""
        ...

    def embed(self, model: str, texts: Sequence[str], requester: str,
              extension: Mapping[str, Any] | None = None) -> list[list[float]]:
        """Vectors for ``texts``; ``extension`` is the request's ``"jupyter_llm_manager"`` object (a borrower's)."""
        ...
