"""Borrowing: a request answered by another member's loaded copy of the same model, instead of a second copy.

Before a generation leases a local copy, the manager looks in the ledger for
another member that lends one with the same share key (the instance key but
the device; for llama.cpp a context at least this spec's): loaded copies
first, then the one with the fewest requests. A copy still loading is waited
for there, not duplicated. The request goes over that member's socket in the
OpenAI wire format, with this manager's exact parameters (:mod:`.protocol`),
and streams back token by token. A refusal before the first piece (the copy
went, the holder's queue is full) tries the next holder, then a local copy.
Once the answer has started, a holder that dies, refuses or stays silent for
``borrow_timeout`` ends it with a :class:`~jupyter_llm_manager.errors.GenerationError`
naming the holder, with the text received so far (``partial``); that holder is
skipped for a while, so the next request borrows another copy or loads its own.
Nothing is borrowed while a local copy exists, for ``share=False``, for remote
models (served already) or models made by a loader (no text interface).
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import logging
import os
import re
import struct
import threading
import time
from collections.abc import Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from ...backends import BackendCache
from ...errors import CopyNotHeld, GenerationError, LLMManagerError
from ...events import EventBus
from ...generation import GenerationResult, StreamInterrupted
from ...support.deadlines import Deadline
from ...support.units import excerpt
from ..cooperation import Cooperation
from ..cooperation.listener import UnixConnection
from ..cooperation.membership import LEDGER_FAILURES
from ..generations import AnyRun, Ask, TextStream
from ..state import ManagerState
from .answering import AnswerRequest
from .protocol import EXTENSION, request_body, result_from

__all__ = ["Borrowing", "Lender"]

log = logging.getLogger(__name__)

#: A holder that failed a borrowed answer is not asked again for this long (its copy may be stuck).
SKIP_FAILED_S = 60.0
#: The longest line of a borrowed stream, and the largest embeddings answer.
_MAX_LINE = 1 << 20
_MAX_BODY = 256 << 20


@dataclass(frozen=True)
class Lender:
    """Another member lending a copy: where it listens, who it is, and how busy its copy is."""

    member: str
    address: str
    name: str  # its notebook, script or "pid N": what a footer says
    loaded: bool
    leases: int


class Borrowing:
    """This manager's requests, answered by another member's copy where one is lent (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, cooperation: Cooperation, backends: BackendCache) -> None:
        self._state = state
        self._bus = bus
        self._cooperation = cooperation
        self._backends = backends
        self._failed: dict[str, float] = {}  # member -> when a borrowed answer from it failed (monotonic)
        self._failed_lock = threading.Lock()

    # -- who lends -------------------------------------------------------------------------------------

    def lenders(self, canonical: str) -> list[Lender]:
        """The members lending a copy that answers for ``canonical``, the best first (none while one is local)."""
        state = self._state
        with state.lock:
            if not (state.settings.share and state.settings.cooperate) or state.closed:
                return []
            registry = state.registry
            spec = registry.specs[canonical]
            local = [registry.keys[canonical]] + ([registry.keys[registry.resolve(spec.base)]]
                                                 if spec.base and spec.base in registry.keys else [])
            if spec.share_key is None or any(key in state.instances for key in local):
                return []
        try:
            need = self._backends(spec.backend).lent_context(spec)
        except (LLMManagerError, OSError):
            need = 0  # its file cannot be read here: a holder that loaded it may still answer
        return self.holders(spec.share_key, need)

    def holders(self, share: str, need: int = 0) -> list[Lender]:
        """The members lending a copy with share key ``share`` (and a context of at least ``need`` tokens where
        it was allocated at load), loaded ones first, then the least busy; holders that failed lately skipped."""
        membership = self._cooperation.membership
        try:  # a ledger that fails is said by the placement that follows (once): borrowing just finds nobody
            ledger = membership.ensure_started()
            if ledger is None:
                return []
            copies = [c for c in ledger.copies(membership.member) if c.share == share
                      and (need == 0 or c.context == 0 or c.context >= need) and not self._skipped(c.member)]
            members, models, _ = ledger.others(membership.member) if copies else ([], [], [])
        except LEDGER_FAILURES as error:
            log.debug("borrowing found no copy: the ledger failed (%s)", error)
            return []
        found = {m.member: m for m in members}
        lenders = []
        for copy in copies:
            member = found.get(copy.member)
            rows = [m for m in models if m.member == copy.member and m.key == copy.key]
            if member is None or not isinstance(member.address, str) or not member.address or not rows:
                continue
            leases = [row.leases for row in rows if isinstance(row.leases, int)]  # a row that says nonsense: 0
            lenders.append(Lender(member.member, member.address, short_name(str(member.notebook), member.pid),
                                  all(row.state == "loaded" for row in rows), max(leases, default=0)))
        return sorted(lenders, key=lambda lender: (not lender.loaded, lender.leases))

    def _skipped(self, member: str) -> bool:
        with self._failed_lock:
            since = self._failed.get(member)
            if since is not None and time.monotonic() - since > SKIP_FAILED_S:
                del self._failed[member]
                return False
            return since is not None

    def failed(self, lender: Lender) -> None:
        with self._failed_lock:
            self._failed[lender.member] = time.monotonic()

    # -- asking ------------------------------------------------------------------------------------------

    def borrow(self, model_id: str, canonical: str, ask: Ask, deadline: Deadline,
               stop: threading.Event | None = None) -> AnyRun | None:
        """A run on another member's copy that accepted ``ask`` and started answering; ``None`` when none did
        (run it locally)."""
        lenders = self.lenders(canonical)
        if not lenders:
            return None
        with self._state.lock:
            share = self._state.registry.specs[canonical].share_key
        assert share is not None
        return self._first_taker(lenders, canonical, *self._body(share, ask, deadline), stop=stop,
                                 whole=bool(ask.texts))

    def forward(self, share: str, model_id: str, request: AnswerRequest, wait: float) -> TextStream:
        """A stream from another member's copy with share key ``share``, for a client that knows it by its holder's
        id ``model_id`` only (``serve``): the client's OpenAI fields go as they came, over the holder's own
        defaults. :class:`~jupyter_llm_manager.errors.CopyNotHeld` when no holder takes it (or ``share`` is off)."""
        params = _openai_fields(request.params)
        body = {"model": share, "stream": True, **params,
                EXTENSION: {**self._identity(), "raw": request.raw, "wait": wait}}
        if isinstance(request.prompt, str):
            body["prompt"], path = request.prompt, "/v1/completions"
        else:
            body["messages"], path = [dict(message) for message in request.prompt], "/v1/chat/completions"

        def begin(stop: threading.Event) -> AnyRun:
            run = self._first_taker(self._shared_holders(share), model_id, path, body, stop=stop)
            if run is None:
                raise CopyNotHeld(model_id)
            return run

        return TextStream(begin, model_id, Ask(request.prompt, None, request.raw, share=False))

    def forward_embed(self, share: str, model_id: str, texts: Sequence[str], wait: float) -> list[list[float]]:
        """Vectors from another member's copy with share key ``share`` (see :meth:`forward`)."""
        ask = Ask(texts=list(texts))
        run = self._first_taker(self._shared_holders(share), model_id, *self._body(share, ask, Deadline(wait)),
                                whole=True)
        if run is None:
            raise CopyNotHeld(model_id)
        try:
            vectors = run.embed(ask, model_id)
        except BaseException as error:
            run.end(None, error)
            raise
        run.end(None, None, done=f"{len(vectors)} vectors")
        return vectors

    def _shared_holders(self, share: str) -> list[Lender]:
        with self._state.lock:
            sharing = self._state.settings.share and self._state.settings.cooperate and not self._state.closed
        return self.holders(share) if sharing else []

    def _first_taker(self, lenders: list[Lender], canonical: str, path: str, body: dict[str, Any], *,
                     stop: threading.Event | None = None, whole: bool = False) -> BorrowedRun | None:
        """The first holder that takes the request and starts answering it: a refusal, or an error before its
        first piece (its copy went, its queue is full, the wait ran out there), asks the next one."""
        with self._state.lock:
            timeout = self._state.settings.borrow_timeout
        if whole:  # a whole answer (vectors) comes at once, after all the work: silence is the work, not a fault
            wait = body.get(EXTENSION, {}).get("wait")
            timeout += min(wait if isinstance(wait, (int, float)) else 3600.0, 3600.0)
        for lender in lenders:
            response = self._send(lender, canonical, path, body, timeout)
            if response is None:
                continue
            run = BorrowedRun(self, lender, canonical, response, timeout, self._bus)
            if whole or run.opened(stop):
                self._bus.emit("borrowing", canonical, message=f"answering from the copy in {lender.name}")
                return run
        return None

    def _identity(self) -> dict[str, Any]:
        """Who asks: the name a holder shows, and this thread (a holder in this process refuses a request from a
        thread that holds its copy's turn: it would wait for itself)."""
        return {"requester": self._requester(), "pid": os.getpid(), "thread": threading.get_ident()}

    def _requester(self) -> str:
        return short_name(self._cooperation.notebook, self._cooperation.pid)

    def _body(self, share: str, ask: Ask, deadline: Deadline) -> tuple[str, dict[str, Any]]:
        """Where and what to send for ``ask``: the borrower's exact parameters, what is left of its wait."""
        identity = self._identity()
        if ask.texts:
            return "/v1/embeddings", {"model": share, "input": list(ask.texts), "encoding_format": "base64",
                                      EXTENSION: {**identity, "wait": deadline.remaining()}}
        assert ask.prompt is not None and ask.params is not None
        body = request_body(share, ask.prompt, ask.params, raw=ask.raw, requester=identity["requester"])
        body[EXTENSION].update(identity, wait=deadline.remaining())
        return ("/v1/completions" if isinstance(ask.prompt, str) else "/v1/chat/completions"), body

    def _send(self, lender: Lender, canonical: str, path: str, body: dict[str, Any],
              timeout: float) -> tuple[UnixConnection, http.client.HTTPResponse] | None:
        """Send the request; the open answer when the holder accepted it, ``None`` when it refused or is gone
        (ask elsewhere); a :class:`GenerationError` when it stayed silent for ``timeout`` seconds."""
        connection = UnixConnection(lender.address, timeout)
        try:
            connection.request("POST", path, body=json.dumps(body).encode(),
                               headers={"Content-Type": "application/json", "User-Agent": "jupyter-llm-manager"})
            response = connection.getresponse()
        except BaseException as error:
            connection.close()  # the holder sees its asker leave (a Ctrl-C here too) and stops
            if not isinstance(error, (OSError, http.client.HTTPException)):
                raise
            self._not_taken(lender, canonical, error, timeout)
            return None
        if response.status != 200:
            said = _error_message(response)
            connection.close()
            log.info("the copy in %s refused the request (%s %s); asking elsewhere", lender.name, response.status, said)
            return None
        return connection, response

    def _not_taken(self, lender: Lender, canonical: str, error: BaseException, timeout: float) -> None:
        """A holder that could not be asked: gone (ask elsewhere), or silent (a :class:`GenerationError`)."""
        self.failed(lender)
        if isinstance(error, TimeoutError):
            raise GenerationError(f"the copy of {canonical!r} in {lender.name} did not answer: "
                                  f"{_why(TimeoutError(), timeout)}. Run the cell again: it loads its own copy or "
                                  "asks another", model_id=canonical) from None
        log.info("the copy in %s did not take the request (%s); asking elsewhere", lender.name, error)


class BorrowedRun:
    """One generation on another member's copy: the open answer, read as it comes (see the module docstring)."""

    def __init__(self, borrowing: Borrowing, lender: Lender, canonical: str,
                 answer: tuple[UnixConnection, http.client.HTTPResponse], timeout: float, bus: EventBus) -> None:
        self._borrowing = borrowing
        self.lender = lender
        self._canonical = canonical
        self._connection, self._response = answer
        self._timeout = timeout
        self._bus = bus
        self._ended = False
        self._last_told = ""
        self._events_read = self._events()
        self._opening: list[dict[str, Any]] = []  # what came before the answer began (read by :meth:`opened`)
        self._stopped = False
        self.started = time.perf_counter()

    def opened(self, stop: threading.Event | None) -> bool:
        """Wait for the answer to begin (its first piece, or its end); ``False`` when the holder said no before
        its first piece (the caller asks another holder, or loads its own copy). Keep-alives meanwhile say where
        the request waits; ``stop`` set meanwhile ends it here. A holder that dies first is asked no more; one that
        stays silent for ``borrow_timeout`` is a :class:`GenerationError`."""
        try:
            for data in self._events_read:
                if stop is not None and stop.is_set():
                    self._stopped = True
                    break
                if isinstance(data, str):
                    self._told(data)
                    continue
                if "error" in data:
                    log.info("the copy in %s refused the request before answering (%s); asking elsewhere",
                             self.lender.name, _said(data["error"]))
                    self._connection.close()
                    return False
                self._opening.append(data)
                if _piece(data) or isinstance(data.get(EXTENSION), dict):
                    break
            return True
        except TimeoutError:
            self._connection.close()
            self._borrowing.failed(self.lender)
            raise GenerationError(f"the copy of {self._canonical!r} in {self.lender.name} did not answer: "
                                  f"{_why(TimeoutError(), self._timeout)}. Run the cell again: it loads its own "
                                  "copy or asks another", model_id=self._canonical) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            self._connection.close()
            self._borrowing.failed(self.lender)
            log.info("the copy in %s stopped before answering (%s); asking elsewhere", self.lender.name, error)
            return False
        except BaseException:
            self._connection.close()  # a Ctrl-C while waiting: the holder sees its asker leave
            raise

    def stream(self, ask: Ask, model_id: str, stop: threading.Event) -> Generator[str, None, GenerationResult]:
        """The pieces as the holder sends them; its result (tokens, why it stopped), with where it ran."""
        pieces: list[str] = []
        result: GenerationResult | None = None
        try:
            for data in itertools.chain(self._opening, self._events_read):
                if stop.is_set() or self._stopped:
                    break
                if isinstance(data, str):  # a keep-alive: the holder waits for its turn (saying where), or loads
                    self._told(data)
                    continue
                if "error" in data:
                    raise self._failure(model_id, pieces, _said(data["error"]))
                piece = _piece(data)
                if piece:
                    pieces.append(piece)
                    yield piece
                found = data.get(EXTENSION)
                if isinstance(found, dict) and "result" in found:
                    result = result_from(found["result"], model_id, "".join(pieces))
            else:
                if result is None:
                    raise self._failure(model_id, pieces, "the answer ended before its last part")
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise self._failure(model_id, pieces, _why(error, self._timeout)) from None
        finally:
            self._connection.close()  # the holder stops within a token when its borrower goes
        if result is None:  # stopped here: what came is the answer
            result = GenerationResult(model_id, "".join(pieces), 0, len(pieces), time.perf_counter() - self.started,
                                      "interrupted")
        return replace(result, served_by=self.lender.name)

    def generate(self, ask: Ask, model_id: str) -> GenerationResult:
        """The whole answer; a Ctrl-C ends it with what came so far (as a local copy's does)."""
        stop = threading.Event()
        pieces = self.stream(ask, model_id, stop)
        received: list[str] = []
        while True:
            try:
                received.append(next(pieces))
            except StopIteration as done:
                return done.value
            except KeyboardInterrupt:
                pieces.close()
                text = "".join(received)
                raise StreamInterrupted(GenerationResult(
                    model_id, text, 0, len(received), time.perf_counter() - self.started, "interrupted",
                    served_by=self.lender.name)) from None

    def embed(self, ask: Ask, model_id: str) -> list[list[float]]:
        """The vectors the holder made."""
        try:
            body = self._response.read(_MAX_BODY + 1)
            if len(body) > _MAX_BODY:
                raise ValueError("the answer is larger than any embeddings answer")
            answer = json.loads(body)
            vectors = [_vector(item["embedding"]) for item in sorted(answer["data"], key=lambda item: item["index"])]
            if len(vectors) != len(ask.texts):
                raise ValueError(f"{len(vectors)} vectors for {len(ask.texts)} texts")
            return vectors
        except (OSError, http.client.HTTPException) as error:
            raise self._failure(model_id, [], _why(error, self._timeout)) from None
        except (ValueError, KeyError, TypeError, struct.error) as error:
            raise self._failure(model_id, [], f"its answer could not be read ({excerpt(str(error), 200)})") from None
        finally:
            self._connection.close()

    def end(self, result: GenerationResult | None, error: BaseException | None, *, done: str | None = None) -> None:
        """Say how it went (nothing is held here: the lease was the holder's)."""
        if self._ended:
            return
        self._ended = True
        self._connection.close()
        where = f"on the copy in {self.lender.name}"
        if result is not None:
            message = f"{result.completion_tokens} tokens, {result.tokens_per_second:.1f} tok/s, {where}"
            if result.finish_reason == "interrupted":
                message += ", interrupted"
            self._bus.emit("generation_finished", self._canonical, seconds=result.seconds, message=message)
        elif error is None:
            self._bus.emit("generation_finished", self._canonical, seconds=time.perf_counter() - self.started,
                           message=f"{done or 'done'} {where}")
        else:
            text = "interrupted" if isinstance(error, KeyboardInterrupt) else f"failed: {error}"
            self._bus.emit("generation_finished", self._canonical, message=text)

    # -- reading the answer ------------------------------------------------------------------------------

    def _events(self) -> Iterator[dict[str, Any] | str]:
        """The JSON of each server-sent event until ``[DONE]``; a keep-alive comment's text (the holder lives: a
        stop asked meanwhile is seen there)."""
        buffer = b""
        while True:
            chunk = self._response.read1(65536)
            if not chunk:
                return  # the holder closed the answer: the caller says whether it was whole
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                text = line.decode("utf-8", "replace").rstrip("\r")
                if text.startswith(":"):
                    yield text[1:].strip()
                if not text.startswith("data:"):
                    continue
                data = text[5:].strip()
                if data == "[DONE]":
                    return
                found = json.loads(data)
                if isinstance(found, dict):
                    yield found
            if len(buffer) > _MAX_LINE:
                raise ValueError("a line of the answer is longer than any answer's line")

    def _told(self, comment: str) -> None:
        """A holder's keep-alive that says where the request waits: a ``waiting`` event here, once per change."""
        if not comment.startswith("waiting") or comment == self._last_told:
            return
        self._last_told = comment
        found = re.search(r": (\d+) requests? ahead", comment)
        self._bus.emit("waiting", self._canonical, position=int(found.group(1)) if found else None,
                       message=f"{comment[:300]} in {self.lender.name}")

    def _failure(self, model_id: str, pieces: list[str], why: str) -> GenerationError:
        """The error a borrowed answer ends with: the holder named, the text so far kept, the holder skipped."""
        self._borrowing.failed(self.lender)
        text = "".join(pieces)
        so_far = f" after {len(text)} characters (on the exception's .partial)" if text else ""
        return GenerationError(f"the copy of {model_id!r} in {self.lender.name} stopped answering{so_far}: {why}. "
                               "Run the cell again: it loads its own copy or asks another", model_id=model_id,
                               partial=text)


def short_name(notebook: str, pid: int) -> str:
    """How a footer names a member: its notebook's or script's file name (``analysis.ipynb``), else ``pid N``."""
    name = notebook.replace("\\", "/").rstrip("/").rpartition("/")[2]
    return name[:200] if name.strip() else f"pid {pid}"


def _openai_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Generation keywords (:class:`GenerationParams` names) as the OpenAI fields a server reads them from."""
    names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
             "seed": "seed", "stop": "stop", "repetition_penalty": "repetition_penalty"}
    return {names[key]: list(value) if key == "stop" else value for key, value in params.items()
            if key in names and value is not None}


def _piece(data: dict[str, Any]) -> str:
    """The text of one chunk (chat delta or completion text)."""
    choices = data.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], dict):
        return ""
    choice = choices[0]
    delta = choice.get("delta")
    text = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    return text if isinstance(text, str) else ""


def _vector(value: Any) -> list[float]:
    if isinstance(value, str):
        raw = base64.b64decode(value)
        return list(struct.unpack(f"<{len(raw) // 4}f", raw))
    if isinstance(value, list) and all(isinstance(number, (int, float)) for number in value):
        return [float(number) for number in value]
    raise ValueError("an embedding is a list of numbers or base64 floats")


def _said(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return excerpt(str(message), 300)


def _why(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"it sent nothing for {timeout:g} s (borrow_timeout)"
    if isinstance(error, (ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return "its process closed the connection (it stopped or died)"
    return excerpt(str(error) or type(error).__name__, 200)


def _error_message(response: http.client.HTTPResponse) -> str:
    try:
        found = json.loads(response.read(64 * 1024) or b"{}")
    except (OSError, ValueError, http.client.HTTPException):
        return ""
    return _said(found.get("error", "")) if isinstance(found, dict) else ""
