"""The ``openai`` backend: any OpenAI-compatible server (vLLM, TGI, Ollama, LM Studio, llama.cpp).

For models that outgrow the notebook's machine. "Loading" checks that the
server answers and serves the model (``GET /v1/models``); generation uses the
chat endpoint (the completion endpoint for ``raw`` prompts), streaming with
server-sent events. The official ``openai`` client is optional
(``pip install 'jupyter_llm_manager[remote]'``); its retries with backoff
cover connection resets, 408, 409, 429 and 5xx within ``max_retries``.

The API key is resolved when the model loads and lives only inside the
client: messages never contain it (server texts are redacted, and an auth
failure names the environment variable, never a value).
"""

from __future__ import annotations

import importlib.util
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ..config.secrets import Secret, expand_references, shown_url, url_credentials
from ..config.spec import ModelSpec
from ..errors import ConfigurationError, GenerationError, ModelLoadingError
from ..generation import GenerationParams, GenerationResult, Prompt
from ..support.units import brief
from .base import Backend, LoadedModel, Placement, TextGenerator

__all__ = ["OpenAIBackend"]

log = logging.getLogger(__name__)

_MISSING = "the openai backend needs the openai package: pip install 'jupyter_llm_manager[remote]'"
_DEFAULT_TIMEOUT_S = 60.0
_DEFAULT_RETRIES = 2
_REQUEST_PARAMS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed"}


def _openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ModelLoadingError(_MISSING) from None
    return openai


@dataclass(eq=False)
class RemoteModel:
    """What a loaded remote model is: a client bound to one served model name."""

    client: Any
    name: str
    endpoint: str
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


class OpenAIBackend(Backend):
    """Talks to an OpenAI-compatible HTTP server; holds no local memory."""

    name = "openai"
    remote = True

    def validate(self, spec: ModelSpec) -> None:
        url = urlparse(spec.base_url or "")
        if url.scheme not in ("http", "https") or not url.netloc:
            raise ConfigurationError(f"base_url must be an http(s) URL such as http://host:8000/v1, got "
                                     f"{brief(shown_url(spec.base_url or ''))}", model_id=spec.id, key="base_url")
        if importlib.util.find_spec("openai") is None:
            raise ConfigurationError(_MISSING, model_id=spec.id, key="backend")

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        """Connect, check the server answers and serves the model, and measure the round trip."""
        reference = spec.api_key.reference if spec.api_key is not None else None
        if reference and os.environ.get(reference) is None:
            raise ModelLoadingError(f"the API key of {spec.id!r} comes from ${{{reference}}}, which is not set: set "
                                    "that environment variable (in the shell that starts Jupyter, or os.environ in a "
                                    "cell you do not keep), then try again", model_id=spec.id)
        openai = _openai()
        userinfo = _value(url_credentials(expand_references(spec.base_url or ""))) or ""
        secrets = tuple(v for v in (_value(spec.api_key), userinfo, *userinfo.split(":"),
                                    *(_value(h) for h in spec.headers.values())) if v)
        client = openai.OpenAI(
            base_url=expand_references(spec.base_url or ""), api_key=_value(spec.api_key) or "none",
            timeout=spec.timeout or _DEFAULT_TIMEOUT_S,
            max_retries=_DEFAULT_RETRIES if spec.max_retries is None else spec.max_retries,
            default_headers={name: _value(value) or "" for name, value in spec.headers.items()},
        )
        remote = RemoteModel(client, spec.model or spec.id, shown_url(spec.base_url or ""), secrets)
        started = time.perf_counter()
        try:
            served = [model.id for model in client.models.list().data]
        except _client_errors() as error:
            client.close()
            raise ModelLoadingError(self._load_failure(spec, remote, error), model_id=spec.id) from None
        latency = time.perf_counter() - started
        if remote.name not in served:
            client.close()
            raise ModelLoadingError(f"{remote.endpoint} does not serve {remote.name!r}; it serves: "
                                    f"{', '.join(served) or 'nothing'}. Set model: to one of those.",
                                    model_id=spec.id)
        details = {"endpoint": remote.endpoint, "model": remote.name, "latency_s": latency,
                   "latency_str": f"{latency * 1000:.0f} ms", "last_error": None, "reachable": True}
        return LoadedModel(model=remote, tokenizer=None, footprint={}, details=details)

    def _load_failure(self, spec: ModelSpec, remote: RemoteModel, error: Exception) -> str:
        openai = _openai()
        url = remote.endpoint
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return (f"the server at {url} rejected the API key ({error.status_code}); the key comes from "
                    f"{_key_origin(spec.api_key)}: check it")
        if isinstance(error, openai.APITimeoutError):
            return f"the server at {url} did not answer within {spec.timeout or _DEFAULT_TIMEOUT_S:g} s"
        if isinstance(error, openai.APIConnectionError):
            return (f"cannot reach the server at {url}: is it running, and is base_url right (it usually ends "
                    "in /v1)?")
        if isinstance(error, openai.NotFoundError):
            return f"{url}/models does not exist: base_url should be the API root, usually ending in /v1"
        if isinstance(error, openai.APIStatusError):
            return f"the server at {url} answered HTTP {error.status_code}: {remote.redact(str(error))[:300]}"
        return f"unexpected error talking to {url}: {remote.redact(str(error))[:300]}"

    # -- generation ---------------------------------------------------------------------

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        started = time.perf_counter()
        response = self._request(loaded, prompt, params, model_id=model_id, raw=raw, stream=True)
        pieces: list[str] = []
        usage, finish, first = None, None, None
        try:
            for chunk in response:
                if stop.is_set():
                    finish = "interrupted"
                    break
                if getattr(chunk, "usage", None) is not None:
                    usage = chunk.usage
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                piece = choice.text if raw else (choice.delta.content or "")
                finish = choice.finish_reason or finish
                if piece:
                    first = first or time.perf_counter()
                    pieces.append(piece)
                    yield piece
        except _client_errors() as error:  # a broken stream: connection reset, server killed, bad chunk
            raise self._generation_failure(loaded, model_id, error, midway=bool(pieces)) from None
        finally:
            response.close()  # also on an interrupt: closes the connection
        if first is not None:
            self._note_latency(loaded, first - started)
        loaded.details.update(last_error=None, last_error_at=None, reachable=True)
        return _result(model_id, "".join(pieces), usage, len(pieces), time.perf_counter() - started, finish)

    def generate(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
                 model_id: str, raw: bool) -> GenerationResult:
        started = time.perf_counter()
        response = self._request(loaded, prompt, params, model_id=model_id, raw=raw, stream=False)
        seconds = time.perf_counter() - started
        self._note_latency(loaded, seconds)
        loaded.details.update(last_error=None, last_error_at=None, reachable=True)
        choice = response.choices[0]
        text = choice.text if raw else (choice.message.content or "")
        return _result(model_id, text, response.usage, None, seconds, choice.finish_reason)

    def _request(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *, model_id: str,
                 raw: bool, stream: bool) -> Any:
        remote: RemoteModel = loaded.model
        arguments: dict[str, Any] = {"model": remote.name, "max_tokens": params.max_new_tokens, "stream": stream}
        for ours, theirs in _REQUEST_PARAMS.items():
            if getattr(params, ours) is not None:
                arguments[theirs] = getattr(params, ours)
        if params.sampling is False:
            arguments["temperature"] = 0
        if params.stop:
            arguments["stop"] = list(params.stop)
        extra = dict(params.extra)
        if params.top_k is not None:
            extra["top_k"] = params.top_k  # vLLM, TGI and llama.cpp accept it beside the OpenAI fields
        if params.repetition_penalty is not None:
            extra["repetition_penalty"] = params.repetition_penalty
        if extra:
            arguments["extra_body"] = extra
        try:
            if raw:
                text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
                return remote.client.completions.create(prompt=text, **arguments)
            messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if stream:
                arguments["stream_options"] = {"include_usage": True}
            return remote.client.chat.completions.create(messages=messages, **arguments)
        except _client_errors() as error:
            raise self._generation_failure(loaded, model_id, error, midway=False, raw=raw) from None

    def _generation_failure(self, loaded: LoadedModel, model_id: str, error: Exception, *, midway: bool,
                            raw: bool = False) -> GenerationError:
        openai = _openai()
        remote: RemoteModel = loaded.model
        url = remote.endpoint
        if isinstance(error, openai.NotFoundError) and raw:
            message = f"{url} has no completion endpoint for raw prompts; send the prompt without raw/--raw"
        elif isinstance(error, openai.RateLimitError):
            message = f"{url} is rate limiting (429), also after the retries; wait, or raise max_retries"
        elif isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            message = f"{url} rejected the API key ({error.status_code}) for {remote.name!r}"
        elif isinstance(error, openai.APIStatusError):
            message = f"{url} answered HTTP {error.status_code}: {remote.redact(str(error))[:300]}"
        elif midway:
            message = (f"the connection to {url} broke in the middle of the answer "
                       f"({type(error).__name__}); the partial answer was kept")
        elif isinstance(error, openai.APIConnectionError):
            message = f"cannot reach {url} ({type(error).__name__}); is the server still running?"
        else:
            message = f"{type(error).__name__} from {url}: {remote.redact(str(error))[:300]}"
        reached = isinstance(error, openai.APIStatusError)  # the server answered, with an error
        loaded.details.update(last_error=message, last_error_at=time.time(), reachable=reached)
        return GenerationError(f"{model_id!r}: {message}", model_id=model_id)

    def _note_latency(self, loaded: LoadedModel, seconds: float) -> None:
        loaded.details["latency_s"] = seconds
        loaded.details["latency_str"] = f"{seconds * 1000:.0f} ms"

    def unload(self, loaded: LoadedModel) -> None:
        remote = loaded.model
        if remote is not None:
            remote.client.close()
        super().unload(loaded)


def _client_errors() -> tuple[type[Exception], ...]:
    """What talking to a server can raise: the client's errors, transport errors, and malformed answers."""
    import httpx

    return (_openai().OpenAIError, httpx.HTTPError, OSError, ValueError, KeyError, AttributeError)


def _value(secret: Secret | None) -> str | None:
    return secret.resolve() if secret is not None else None


def _key_origin(secret: Secret | None) -> str:
    if secret is None:
        return "nowhere (no api_key is set)"
    if secret.reference:
        return f"${{{secret.reference}}}"
    return "the api_key written in clear in the spec"


def _result(model_id: str, text: str, usage: Any, pieces: int | None, seconds: float,
            finish: str | None) -> GenerationResult:
    prompt_tokens = getattr(usage, "prompt_tokens", 0) or 0
    completion = getattr(usage, "completion_tokens", None)
    if completion is None:  # a server that does not report usage: count the streamed pieces
        completion = pieces or 0
    reason = finish if finish in ("length", "interrupted") else "stop"
    return GenerationResult(model_id, text, int(prompt_tokens), int(completion), seconds, reason)  # type: ignore[arg-type]
