"""A borrowed run: one generation on another member's copy, its answer read as it comes (see :mod:`.borrowing`).

The holder is not trusted more than any server: lines and bodies are
bounded, every field is checked, and a holder that stops answering, dies or
says something unreadable ends the run with a
:class:`~jupyter_llm_manager.errors.GenerationError` naming it, the text
received so far on ``partial``.
"""

from __future__ import annotations

import base64
import http.client
import itertools
import json
import logging
import re
import struct
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from typing import Any

from ...errors import GenerationError
from ...events import EventBus
from ...generation import GenerationResult, StreamInterrupted
from ...support.units import excerpt
from ..cooperation.listener import UnixConnection
from ..generations import Ask
from .protocol import EXTENSION, result_from

__all__ = ["BorrowedRun", "Lender", "error_message", "said_of", "silent", "why_failed"]

log = logging.getLogger(__name__)

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


class BorrowedRun:
    """One generation on another member's copy: the open answer, read as it comes (see the module docstring)."""

    def __init__(self, failed: Callable[[Lender], None], lender: Lender, canonical: str,
                 answer: tuple[UnixConnection, http.client.HTTPResponse], timeout: float, bus: EventBus) -> None:
        self._failed = failed  # the holder is asked no more for a while
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
                             self.lender.name, said_of(data["error"]))
                    self._connection.close()
                    return False
                self._opening.append(data)
                if _piece(data) or isinstance(data.get(EXTENSION), dict):
                    break
            return True
        except TimeoutError:
            self._connection.close()
            self._failed(self.lender)
            raise silent(self._canonical, self.lender, self._timeout) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            self._connection.close()
            self._failed(self.lender)
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
                    raise self._failure(model_id, pieces, said_of(data["error"]))
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
            raise self._failure(model_id, pieces, why_failed(error, self._timeout)) from None
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
            raise self._failure(model_id, [], why_failed(error, self._timeout)) from None
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
        self._failed(self.lender)
        text = "".join(pieces)
        so_far = f" after {len(text)} characters (on the exception's .partial)" if text else ""
        return GenerationError(f"the copy of {model_id!r} in {self.lender.name} stopped answering{so_far}: {why}. "
                               "Run the cell again: it loads its own copy or asks another", model_id=model_id,
                               partial=text)


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


def silent(canonical: str, lender: Lender, timeout: float) -> GenerationError:
    """The error of a holder that sent nothing for ``timeout`` seconds before it answered."""
    return GenerationError(f"the copy of {canonical!r} in {lender.name} did not answer: "
                           f"{why_failed(TimeoutError(), timeout)}. Run the cell again: it loads its own copy or asks "
                           "another", model_id=canonical)


def said_of(error: Any) -> str:
    message = error.get("message") if isinstance(error, dict) else error
    return excerpt(str(message), 300)


def why_failed(error: BaseException, timeout: float) -> str:
    if isinstance(error, TimeoutError):
        return f"it sent nothing for {timeout:g} s (borrow_timeout)"
    if isinstance(error, (ConnectionError, http.client.IncompleteRead, http.client.RemoteDisconnected)):
        return "its process closed the connection (it stopped or died)"
    return excerpt(str(error) or type(error).__name__, 200)


def error_message(response: http.client.HTTPResponse) -> str:
    try:
        found = json.loads(response.read(64 * 1024) or b"{}")
    except (OSError, ValueError, http.client.HTTPException):
        return ""
    return said_of(found.get("error", "")) if isinstance(found, dict) else ""
