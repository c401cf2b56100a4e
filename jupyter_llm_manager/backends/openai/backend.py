"""The ``openai`` backend: any OpenAI-compatible server (vLLM, TGI, Ollama, LM Studio, llama.cpp).

For models that outgrow the notebook's machine. "Loading" checks that the
server answers and serves the model (``GET /v1/models``); generation uses the
chat endpoint (the completion endpoint for ``raw`` prompts), streaming with
server-sent events. The official ``openai`` client is optional
(``pip install 'jupyter_llm_manager[remote]'``); it sends each request, with
its retries with backoff (connection resets, 408, 409, 429 and 5xx within
``max_retries``), and each id's own ``timeout`` and ``max_retries`` apply:
they are part of its instance key, so ids that differ in them have their own
client.

The server is not trusted (:mod:`.openai_wire` reads its answers within
bounds): a stream ends after ``max_new_tokens`` pieces even if the server
goes on, a stream cut before it finished is an error (not a short answer),
and a malformed chunk is a :class:`GenerationError`. Every message quotes the
server through a bounded excerpt.

The API key is resolved when the model loads and lives only inside the
client: messages never contain it (server texts are redacted, and an auth
failure names the environment variable, never a value).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import logging
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from ...config.secrets import Secret, expand_references, shown_url, url_credentials
from ...config.spec import ModelSpec
from ...errors import ConfigurationError, GenerationError, ModelLoadingError
from ...generation import FinishReason, GenerationParams, GenerationResult, Prompt
from ...support.units import brief, excerpt
from ..base import Backend, LoadedModel, Placement, TextGenerator
from .wire import (
    DONE,
    BadAnswer,
    Facts,
    SlowAnswer,
    Usage,
    chunk_facts,
    completion_facts,
    event_data,
    parse_json,
    read_json,
    served_ids,
)

__all__ = ["OpenAIBackend"]

log = logging.getLogger(__name__)

_MISSING = "the openai backend needs the openai package: pip install 'jupyter_llm_manager[remote]'"
_DEFAULT_TIMEOUT_S = 60.0
_DEFAULT_RETRIES = 2
_REQUEST_PARAMS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed"}
_MODEL_LIST_BYTES = 64 << 20  # 100,000 ids are about 4 MB
_BYTES_PER_CHUNK = 16 << 10  # a chunk is a few hundred bytes; with logprobs a few KB


def _openai() -> Any:
    try:
        import openai
    except ImportError:
        raise ModelLoadingError(_MISSING) from None
    return openai


@dataclass(eq=False)
class RemoteModel:
    """What a loaded remote model is: a client bound to one served model name, and its timeout."""

    client: Any
    name: str
    endpoint: str
    timeout: float = _DEFAULT_TIMEOUT_S
    secrets: tuple[str, ...] = field(default=(), repr=False)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def say(self, message: str) -> str:
        """``message`` as it may be shown: secrets replaced, at most 500 characters."""
        return excerpt(self.redact(message))


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
        remote = _connect(spec)
        started = time.perf_counter()
        try:
            served = _served(remote)
        except (_openai().OpenAIError, *_reading_errors()) as error:
            remote.client.close()
            raise ModelLoadingError(remote.say(self._load_failure(spec, remote, error)), model_id=spec.id) from None
        latency = time.perf_counter() - started
        if remote.name not in set(served):
            remote.client.close()
            raise ModelLoadingError(remote.say(
                f"{remote.endpoint} does not serve {remote.name!r}; it serves: {_some_of(served)}. Set model: to "
                f"one of those (GET {remote.endpoint}/models lists them all)"), model_id=spec.id)
        details = {"endpoint": remote.endpoint, "model": remote.name, "latency_s": latency,
                   "latency_str": f"{latency * 1000:.0f} ms", "last_error": None, "reachable": True}
        return LoadedModel(model=remote, tokenizer=None, footprint={}, details=details)

    def _load_failure(self, spec: ModelSpec, remote: RemoteModel, error: Exception) -> str:
        openai = _openai()
        url = remote.endpoint
        if isinstance(error, (openai.AuthenticationError, openai.PermissionDeniedError)):
            return (f"the server at {url} rejected the API key ({error.status_code}); the key comes from "
                    f"{_key_origin(spec.api_key)}: check it")
        if isinstance(error, (SlowAnswer, *_timeouts())):
            return f"the server at {url} did not answer within {remote.timeout:g} s"
        if isinstance(error, BadAnswer):
            return (f"{url}/models {error}: is base_url the API root of an OpenAI-compatible server (it usually "
                    "ends in /v1)?")
        if isinstance(error, openai.APIConnectionError):
            return (f"cannot reach the server at {url}: is it running, and is base_url right (it usually ends "
                    "in /v1)?")
        if isinstance(error, openai.NotFoundError):
            return f"{url}/models does not exist: base_url should be the API root, usually ending in /v1"
        if isinstance(error, openai.APIStatusError):
            return f"the server at {url} answered HTTP {error.status_code}: {excerpt(remote.redact(str(error)), 300)}"
        return f"unexpected {type(error).__name__} talking to {url}: {excerpt(remote.redact(str(error)), 300)}"

    # -- generation ---------------------------------------------------------------------

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        started = time.perf_counter()
        response = self._send(loaded, prompt, params, model_id=model_id, raw=raw, stream=True)
        return (yield from self._read_stream(loaded, response, params.max_new_tokens, model_id=model_id, raw=raw,
                                             stop=stop, started=started))

    def generate(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
                 model_id: str, raw: bool) -> GenerationResult:
        started = time.perf_counter()
        remote: RemoteModel = loaded.model
        response = self._send(loaded, prompt, params, model_id=model_id, raw=raw, stream=False)
        if response.headers.get("content-type", "").startswith("text/event-stream"):  # it streams anyway
            return _drained(self._read_stream(loaded, response, params.max_new_tokens, model_id=model_id, raw=raw,
                                              stop=threading.Event(), started=started))
        try:
            body = read_json(response.iter_bytes(), max_bytes=_BYTES_PER_CHUNK * (params.max_new_tokens + 64),
                             within_s=remote.timeout, what="an answer")
            facts = completion_facts(body, raw=raw)
        except _reading_errors() as error:
            raise self._reading_failure(loaded, model_id, error, pieces=0) from None
        finally:
            _close(response)
        seconds = time.perf_counter() - started
        self._note_latency(loaded, seconds)
        loaded.details.update(last_error=None, last_error_at=None, reachable=True)
        return _result(model_id, facts, None, seconds)

    def _read_stream(self, loaded: LoadedModel, response: Any, max_new_tokens: int, *, model_id: str, raw: bool,
                     stop: threading.Event, started: float) -> TextGenerator:
        """The pieces of an event-stream answer, at most ``max_new_tokens``; its response is closed after."""
        remote: RemoteModel = loaded.model
        answer = _Answer(max_new_tokens)
        try:
            events = event_data(response.iter_bytes(), max_bytes=_BYTES_PER_CHUNK * answer.max_chunks,
                                quiet_s=remote.timeout)
            yield from answer.read(events, raw=raw, stop=stop)
        except _reading_errors() as error:  # a cut connection, a stall, a malformed chunk
            raise self._reading_failure(loaded, model_id, error, pieces=len(answer.pieces)) from None
        finally:
            _close(response)  # also on an interrupt and after max_new_tokens: closes the connection
        if not answer.finished:
            kept = "; the partial answer was kept" if answer.pieces else ""
            raise self._failed(loaded, model_id, f"{remote.endpoint} closed the stream before the answer finished "
                                                 f"(no finish_reason and no [DONE] after {len(answer.pieces)} pieces)"
                                                 f"{kept}; the server may have stopped: check its logs", reached=True)
        if answer.first_at is not None:
            self._note_latency(loaded, answer.first_at - started)
        loaded.details.update(last_error=None, last_error_at=None, reachable=True)
        return _result(model_id, Facts("".join(answer.pieces), answer.finish, answer.usage), len(answer.pieces),
                       time.perf_counter() - started)

    def _send(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *, model_id: str,
              raw: bool, stream: bool) -> Any:
        """Send the request (the client retries what may be retried); the response, its body not yet read."""
        remote: RemoteModel = loaded.model
        arguments = _arguments(remote.name, params, stream=stream)
        if raw:
            arguments["prompt"] = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        else:
            arguments["messages"] = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
            if stream:
                arguments["stream_options"] = {"include_usage": True}
        endpoint = remote.client.completions if raw else remote.client.chat.completions
        try:  # entering the context manager sends the request; _close() is its exit
            return endpoint.with_streaming_response.create(**arguments).__enter__()
        except (_openai().OpenAIError, *_http_errors()) as error:
            raise self._request_failure(loaded, model_id, error, raw=raw) from None

    def _request_failure(self, loaded: LoadedModel, model_id: str, error: Exception, *,
                         raw: bool) -> GenerationError:
        """The request failed before any answer arrived (also after the retries)."""
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
            message = f"{url} answered HTTP {error.status_code}: {excerpt(remote.redact(str(error)), 300)}"
        elif isinstance(error, _timeouts()):
            message = (f"{url} did not answer within {remote.timeout:g} s; it may be busy: wait, or raise timeout "
                       "for this model")
        elif isinstance(error, (openai.APIConnectionError, *_http_errors())):
            message = f"cannot reach {url} ({type(error).__name__}); is the server still running?"
        else:
            message = f"{type(error).__name__} from {url}: {excerpt(remote.redact(str(error)), 300)}"
        return self._failed(loaded, model_id, message, reached=isinstance(error, openai.APIStatusError))

    def _reading_failure(self, loaded: LoadedModel, model_id: str, error: Exception, *,
                         pieces: int) -> GenerationError:
        """The answer started, then went wrong: a stall, a malformed answer, a cut connection."""
        url = loaded.model.endpoint
        kept = "; the partial answer was kept" if pieces else ""
        if isinstance(error, SlowAnswer):
            message = f"{url} {error} in the middle of the answer{kept}; it may be overloaded: wait, or raise timeout"
        elif isinstance(error, BadAnswer):
            message = f"{url} {error} (not an OpenAI-compatible answer){kept}; check the server and its logs"
        elif isinstance(error, _timeouts()):
            message = (f"{url} sent nothing for {loaded.model.timeout:g} s in the middle of the answer{kept}; it "
                       "may be overloaded: wait, or raise timeout")
        else:
            message = (f"the connection to {url} broke in the middle of the answer ({type(error).__name__}): the "
                       f"server closed the stream before the answer finished{kept}")
        return self._failed(loaded, model_id, message, reached=isinstance(error, (BadAnswer, SlowAnswer)))

    def _failed(self, loaded: LoadedModel, model_id: str, message: str, *, reached: bool) -> GenerationError:
        """Record the failure in the model's details (status shows it) and build its error, both bounded."""
        remote: RemoteModel = loaded.model
        message = remote.say(message)
        loaded.details.update(last_error=message, last_error_at=time.time(), reachable=reached)
        return GenerationError(remote.say(f"{model_id!r}: {message}"), model_id=model_id)

    def _note_latency(self, loaded: LoadedModel, seconds: float) -> None:
        loaded.details["latency_s"] = seconds
        loaded.details["latency_str"] = f"{seconds * 1000:.0f} ms"

    def unload(self, loaded: LoadedModel) -> None:
        remote = loaded.model
        if remote is not None:
            remote.client.close()
        super().unload(loaded)


class _Answer:
    """What one stream brought so far; reads the server's events, at most ``max_new_tokens`` pieces of them.

    An honest server sends at most ``max_new_tokens`` chunks with text, and a
    few without (the role, the finish, the usage); more than twice that is a
    server that does not stop.
    """

    def __init__(self, max_pieces: int) -> None:
        self.max_pieces = max_pieces
        self.max_chunks = 2 * max_pieces + 16
        self.pieces: list[str] = []
        self.chunks = 0
        self.finish: str | None = None
        self.usage: Usage | None = None
        self.done = False
        self.first_at: float | None = None

    @property
    def finished(self) -> bool:
        """Whether the answer ended as answers end: ``[DONE]``, a finish_reason, or our own stop."""
        return self.done or self.finish is not None

    def read(self, events: Iterator[str], *, raw: bool, stop: threading.Event) -> Iterator[str]:
        """Yield the text pieces of ``events``; stop at ``[DONE]``, at the end of the bytes, or when asked."""
        while True:
            if stop.is_set():
                self.finish = "interrupted"
                return
            data = next(events, None)
            if data is None:
                return
            if data.strip() == DONE:
                self.done = True
                return
            facts = chunk_facts(parse_json(data, "a chunk"), raw=raw)
            if facts.text and len(self.pieces) >= self.max_pieces:
                self.finish = "length"  # the server goes on past max_new_tokens: stop reading
                return
            self._take(facts)
            if facts.text:
                yield facts.text

    def _take(self, facts: Facts) -> None:
        self.chunks += 1
        if self.chunks > self.max_chunks:
            raise BadAnswer(f"kept streaming past max_new_tokens={self.max_pieces} ({self.chunks - 1} chunks, "
                            f"{len(self.pieces)} with text)")
        self.usage = facts.usage or self.usage
        self.finish = facts.finish or self.finish
        if facts.text:
            self.first_at = self.first_at or time.perf_counter()
            self.pieces.append(facts.text)


def _connect(spec: ModelSpec) -> RemoteModel:
    """A client with this id's own key, headers, timeout and retries (nothing is sent yet)."""
    userinfo = _value(url_credentials(expand_references(spec.base_url or ""))) or ""
    secrets = tuple(v for v in (_value(spec.api_key), userinfo, *userinfo.split(":"),
                                *(_value(h) for h in spec.headers.values())) if v)
    timeout = spec.timeout or _DEFAULT_TIMEOUT_S
    client = _openai().OpenAI(
        base_url=expand_references(spec.base_url or ""), api_key=_value(spec.api_key) or "none", timeout=timeout,
        max_retries=_DEFAULT_RETRIES if spec.max_retries is None else spec.max_retries,
        default_headers={name: _value(value) or "" for name, value in spec.headers.items()},
    )
    return RemoteModel(client, spec.model or spec.id, shown_url(spec.base_url or ""), timeout, secrets)


def _served(remote: RemoteModel) -> list[str]:
    """The ids the server lists on ``/models`` (read within bounds)."""
    response = remote.client.models.with_streaming_response.list().__enter__()
    try:
        return served_ids(read_json(response.iter_bytes(), max_bytes=_MODEL_LIST_BYTES, within_s=remote.timeout,
                                    what="a model list"))
    finally:
        _close(response)


def _arguments(name: str, params: GenerationParams, *, stream: bool) -> dict[str, Any]:
    """The request's fields for ``params`` (without the prompt)."""
    arguments: dict[str, Any] = {"model": name, "max_tokens": params.max_new_tokens, "stream": stream}
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
    return arguments


def _drained(pieces: TextGenerator) -> GenerationResult:
    """The result of a stream read to its end."""
    while True:
        try:
            next(pieces)
        except StopIteration as done:
            return done.value


def _close(response: Any) -> None:
    """Close a response (and its connection, when unread); a connection already broken stays quiet."""
    try:
        response.close()
    except (_openai().OpenAIError, *_http_errors()) as error:
        log.debug("closing the response: %s", type(error).__name__)


@functools.cache
def _http_errors() -> tuple[type[Exception], ...]:
    """What reading from a server can raise: the transport errors of httpx (openai 1-2) or httpx2 (openai 3+)."""
    errors: list[type[Exception]] = [OSError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).HTTPError)
        except ImportError:
            continue
    return tuple(errors)


def _reading_errors() -> tuple[type[Exception], ...]:
    """What reading an answer can raise: a malformed answer, a stall (an OSError), a transport error."""
    return (BadAnswer, *_http_errors())


@functools.cache
def _timeouts() -> tuple[type[Exception], ...]:
    """The timeouts among :func:`_http_errors` and the client's own."""
    errors: list[type[Exception]] = [TimeoutError, _openai().APITimeoutError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(importlib.import_module(name).TimeoutException)
        except ImportError:
            continue
    return tuple(errors)


def _some_of(names: list[str], limit: int = 240) -> str:
    """The first of ``names`` that fit in about ``limit`` characters, and how many more (a server may list 100,000)."""
    if not names:
        return "nothing"
    shown: list[str] = []
    length = 0
    for name in names:
        part = excerpt(name, 60)
        if shown and length + len(part) > limit:
            break
        shown.append(part)
        length += len(part) + 2
    more = len(names) - len(shown)
    return ", ".join(shown) + (f" and {more:,} more" if more else "")


def _value(secret: Secret | None) -> str | None:
    return secret.resolve() if secret is not None else None


def _key_origin(secret: Secret | None) -> str:
    if secret is None:
        return "nowhere (no api_key is set)"
    if secret.reference:
        return f"${{{secret.reference}}}"
    return "the api_key written in clear in the spec"


def _result(model_id: str, facts: Facts, pieces: int | None, seconds: float) -> GenerationResult:
    """The result of an answer: the server's token counts when it reports them, else the pieces streamed."""
    usage = facts.usage or Usage(None, None)
    completion = usage.completion_tokens
    if completion is None:  # a server that does not report usage: count the streamed pieces
        completion = pieces or 0
    reason: FinishReason = "length" if facts.finish == "length" else (
        "interrupted" if facts.finish == "interrupted" else "stop")  # a server's other reasons are a stop
    return GenerationResult(model_id, facts.text, usage.prompt_tokens or 0, completion, seconds, reason)
