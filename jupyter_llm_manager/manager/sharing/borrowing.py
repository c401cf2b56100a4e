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

import http.client
import json
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ...backends import BackendCache
from ...errors import CopyNotHeld, LLMManagerError
from ...events import EventBus
from ...support.deadlines import Deadline
from ...support.names import footer_names
from ..cooperation import Cooperation
from ..cooperation.listener import UnixConnection
from ..cooperation.membership import LEDGER_FAILURES
from ..generations import AnyRun, Ask, TextStream
from ..state import ManagerState
from .answering import AnswerRequest
from .borrowed import BorrowedRun, Lender, error_message, silent
from .protocol import EXTENSION, request_body

__all__ = ["Borrowing", "Lender"]

log = logging.getLogger(__name__)

#: A holder that failed a borrowed answer is not asked again for this long (its copy may be stuck).
SKIP_FAILED_S = 60.0


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
            members, models, _ = ledger.others(membership.member)
            copies = [c for c in ledger.copies(members) if c.share == share
                      and (need == 0 or c.context == 0 or c.context >= need) and not self._skipped(c.member)]
        except LEDGER_FAILURES as error:
            log.debug("borrowing found no copy: the ledger failed (%s)", error)
            return []
        found = {m.member: m for m in members}
        names = footer_names({m.member: _named(str(m.notebook), m.pid) for m in members})
        lenders = []
        for copy in copies:
            member = found.get(copy.member)
            rows = [m for m in models if m.member == copy.member and m.key == copy.key]
            if member is None or not isinstance(member.address, str) or not member.address or not rows:
                continue
            leases = [row.leases for row in rows if isinstance(row.leases, int)]  # a row that says nonsense: 0
            lenders.append(Lender(member.member, member.address, names[member.member],
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
            run = BorrowedRun(self.failed, lender, canonical, response, timeout, self._bus)
            if whole or run.opened(stop):
                self._bus.emit("borrowing", canonical, message=f"answering from the copy in {lender.name}")
                return run
        return None

    def _identity(self) -> dict[str, Any]:
        """Who asks: the name a holder shows, and this thread (a holder in this process refuses a request from a
        thread that holds its copy's turn: it would wait for itself)."""
        return {"requester": self._requester(), "pid": os.getpid(), "thread": threading.get_ident()}

    def _requester(self) -> str:
        """This member as the holder lists it among the borrowers (its listings name it from there)."""
        return _named(self._cooperation.notebook, self._cooperation.pid)

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
            said = error_message(response)
            connection.close()
            log.info("the copy in %s refused the request (%s %s); asking elsewhere", lender.name, response.status, said)
            return None
        return connection, response

    def _not_taken(self, lender: Lender, canonical: str, error: BaseException, timeout: float) -> None:
        """A holder that could not be asked: gone (ask elsewhere), or silent (a :class:`GenerationError`)."""
        self.failed(lender)
        if isinstance(error, TimeoutError):
            raise silent(canonical, lender, timeout) from None
        log.info("the copy in %s did not take the request (%s); asking elsewhere", lender.name, error)


def _named(notebook: str, pid: int) -> str:
    """A member's published name (its notebook's or script's path), or ``pid N`` where it has none."""
    return notebook[:500] if notebook.strip() else f"pid {pid}"


def _openai_fields(params: Mapping[str, Any]) -> dict[str, Any]:
    """Generation keywords (:class:`GenerationParams` names) as the OpenAI fields a server reads them from."""
    names = {"max_new_tokens": "max_tokens", "temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
             "seed": "seed", "stop": "stop", "repetition_penalty": "repetition_penalty"}
    return {names[key]: list(value) if key == "stop" else value for key, value in params.items()
            if key in names and value is not None}
