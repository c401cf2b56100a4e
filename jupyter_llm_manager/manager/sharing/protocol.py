"""The OpenAI wire format between members, with the few fields a borrowed answer needs to be the same answer.

A borrowed request is an ordinary OpenAI chat (or completion, for a raw
prompt) request, streamed with server-sent events. What the borrower's own
manager decided travels in one extension object, ``"jupyter_llm_manager"``:
every generation parameter exactly as the borrower would have used it (its
spec's defaults and the call's), so the holder runs the same generation it
would run for itself, not with its own spec's defaults; the model's own
recommended settings (its files) are the same on both sides. The final chunk
carries the result's facts (tokens, seconds, why it stopped) the same way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from typing import Any

from ...generation import FinishReason, GenerationParams, GenerationResult, Prompt

__all__ = ["EXTENSION", "params_from", "params_to", "request_body", "result_from", "result_to"]

#: The extension object's key in requests and chunks.
EXTENSION = "jupyter_llm_manager"
_FINISHES: frozenset[str] = frozenset({"stop", "length", "stop_string", "repetition", "interrupted"})


def params_to(params: GenerationParams) -> dict[str, Any]:
    """Every field of ``params`` as JSON (``extra`` kept when it is plain data)."""
    found = {f.name: getattr(params, f.name) for f in dataclasses.fields(params) if f.name != "extra"}
    found["stop"] = list(params.stop)
    extra = dict(params.extra)
    try:
        json.dumps(extra)
    except (TypeError, ValueError):
        extra = {}
    found["extra"] = extra
    return found


def params_from(data: Any) -> GenerationParams:
    """The parameters a borrower sent (:class:`~jupyter_llm_manager.errors.InvalidGenerationParameters` when
    they are not valid ones)."""
    if not isinstance(data, Mapping):
        data = {}
    known = {f.name for f in dataclasses.fields(GenerationParams)}
    return GenerationParams.build({key: value for key, value in data.items() if key in known})


def request_body(share_key: str, prompt: Prompt, params: GenerationParams, *, raw: bool, requester: str,
                 stream: bool = True) -> dict[str, Any]:
    """An OpenAI chat request (a completion for a raw prompt) for the copy ``share_key``, with the extension."""
    body: dict[str, Any] = {"model": share_key, "stream": stream, "max_tokens": params.max_new_tokens,
                            EXTENSION: {"params": params_to(params), "raw": raw, "requester": requester}}
    if params.temperature is not None:
        body["temperature"] = params.temperature
    if params.top_p is not None:
        body["top_p"] = params.top_p
    if params.seed is not None:
        body["seed"] = params.seed
    if isinstance(prompt, str):
        body["prompt"] = prompt
    else:
        body["messages"] = [dict(message) for message in prompt]
    return body


def result_to(result: GenerationResult) -> dict[str, Any]:
    return {"prompt_tokens": result.prompt_tokens, "completion_tokens": result.completion_tokens,
            "seconds": result.seconds, "finish_reason": result.finish_reason, "warnings": list(result.warnings),
            "max_new_tokens": result.max_new_tokens, "context_limited": result.context_limited}


def result_from(data: Any, model_id: str, text: str) -> GenerationResult | None:
    """The holder's result for the borrower's id, with the text the borrower received; ``None`` when unreadable."""
    if not isinstance(data, Mapping):
        return None
    try:
        finish: FinishReason = data["finish_reason"] if data["finish_reason"] in _FINISHES else "stop"
        limit = data.get("max_new_tokens")
        return GenerationResult(model_id, text, int(data["prompt_tokens"]), int(data["completion_tokens"]),
                                float(data["seconds"]), finish,
                                tuple(str(w)[:500] for w in data.get("warnings", ())[:10]),
                                int(limit) if isinstance(limit, int) else None, bool(data.get("context_limited")))
    except (KeyError, TypeError, ValueError):
        return None
