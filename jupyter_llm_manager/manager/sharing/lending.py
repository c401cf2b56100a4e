"""Lending: another member's request answered from a copy this manager holds, as if it were its own request.

The request names the copy by its share key (:attr:`~jupyter_llm_manager.config.spec.ModelSpec.share_key`);
it runs under a lease here (the copy is not evicted mid-answer, and its
keep-alive counts the use), takes its turn with this kernel's own requests,
and never loads anything: a copy that is gone (or was never here, or this
manager does not share) is :class:`~jupyter_llm_manager.errors.CopyNotHeld`,
and the borrower asks another or loads its own. The borrower's exact
parameters come with the request (:mod:`.protocol`); a plain OpenAI client's
fields are applied over this copy's own defaults.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from ...errors import CopyNotHeld, ManagerClosedError
from ...events import EventBus
from ...generation import GenerationParams, GenerationResult
from ...support.names import message_name, published_name, shown_name
from ..generations import Ask, Generations, TextStream, checked_params
from ..instances import Instance
from ..state import ManagerState
from .answering import AnswerRequest
from .protocol import params_from

__all__ = ["LENDING_HEARTBEAT_S", "Lending", "LentStream", "lending_routes"]

#: How often a lent stream that has nothing to send yet (waiting for its turn, loading) says it is alive.
LENDING_HEARTBEAT_S = 0.5
#: The most requests from other members answered at once (each holds a thread while it runs or waits its turn).
LENDING_MAX_RUNNING = 16


class Lending:
    """This manager's copies, answered to the other members of the machine (see the module docstring)."""

    def __init__(self, state: ManagerState, bus: EventBus, generations: Generations, member_name: str) -> None:
        self._state = state
        self._bus = bus
        self._generations = generations
        self._name = member_name

    def models(self) -> list[dict[str, Any]]:
        """The copies lent now, by share key."""
        with self._state.lock:
            if not self._state.settings.share:
                return []
            keys = {instance.spec.share_key for instance in self._state.instances.values()
                    if instance.state in ("loading", "loaded")}
        return [{"id": key, "object": "model", "owned_by": self._name} for key in sorted(k for k in keys if k)]

    def stream(self, request: AnswerRequest) -> LentStream:
        """The answer, on the copy with the request's share key (refused at once when it is not here); its lease
        and turn are taken when the stream starts."""
        model_id, instance = self._find(request.model)
        self._refuse_own_turn(instance, request.extension)
        params = self._params(request, model_id, instance)
        notes = _Notes()
        raw = request.extension.get("raw")
        ask = Ask(request.prompt, params, raw if isinstance(raw, bool) else request.raw, share=False,
                  told=notes.tell)
        requester = _requester(request)
        stream = self._generations.lend(model_id, model_id, ask, wait=self._wait(request.extension))
        return LentStream(stream, self._borrowed(model_id, instance, requester), notes)

    def embed(self, model: str, texts: Sequence[str], requester: str,
              extension: Mapping[str, Any] | None = None) -> list[list[float]]:
        request = AnswerRequest(model, "", raw=True, extension=extension or {}, requester=requester)
        model_id, instance = self._find(model)
        self._refuse_own_turn(instance, request.extension)
        release = self._borrowed(model_id, instance, _requester(request))
        try:
            return self._generations.embed(model_id, model_id, Ask(texts=list(texts), share=False),
                                           wait=self._wait(extension or {}), existing=True)
        finally:
            release()

    # -- finding the copy ------------------------------------------------------------------------------

    def _find(self, share_key: str) -> tuple[str, Instance]:
        """The copy with ``share_key`` loaded (or loading) here, and its registered id; :class:`CopyNotHeld` else."""
        state = self._state
        with state.lock:
            if state.closed:
                raise ManagerClosedError()
            if state.settings.share:
                for instance in state.instances.values():
                    if instance.spec.share_key == share_key and instance.state in ("loading", "loaded"):
                        ids = state.registry.ids_of(instance.key)
                        if ids:
                            return ids[0], instance
        raise CopyNotHeld(share_key[:200])

    def _params(self, request: AnswerRequest, model_id: str, instance: Instance) -> GenerationParams:
        """The borrower's exact parameters, else the client's over this copy's own defaults."""
        sent = request.extension.get("params")
        if isinstance(sent, Mapping):
            return params_from(sent)
        with self._state.lock:
            spec = self._state.registry.specs[self._state.registry.resolve(model_id)]
        return checked_params(spec, instance.backend, request.params)

    @staticmethod
    def _refuse_own_turn(instance: Instance, extension: Mapping[str, Any]) -> None:
        """A request from a thread of this very process that holds the copy's turn would wait for itself (a
        stream it has not finished, a ``use()`` block): refused at once (it then runs on its own manager's copy)."""
        pid, thread = extension.get("pid"), extension.get("thread")
        if pid == os.getpid() and isinstance(thread, int) and instance.turns.held_by(thread):
            raise CopyNotHeld(instance.spec.id)

    def _wait(self, extension: Mapping[str, Any]) -> float:
        """How long the request may wait for its turn here: what the borrower has left of its own wait."""
        wait = extension.get("wait")
        if isinstance(wait, (int, float)) and not isinstance(wait, bool) and wait >= 0:
            return float(wait)
        with self._state.lock:
            return self._state.settings.wait_timeout

    # -- who borrows -------------------------------------------------------------------------------------

    def _borrowed(self, model_id: str, instance: Instance, requester: str) -> Callable[[], None]:
        """Count ``requester`` as a borrower of ``instance`` until the returned function is called (once)."""
        state = self._state
        with state.lock:
            instance.borrowers[requester] += 1
            state.touch()
        self._bus.emit("lending", model_id, message=f"answering {requester} from this copy")
        released = threading.Event()

        def release() -> None:
            if released.is_set():
                return
            released.set()
            with state.lock:
                instance.borrowers[requester] -= 1
                if instance.borrowers[requester] <= 0:
                    del instance.borrowers[requester]
                state.touch()

        return release


class _Notes:
    """What a lent request is doing while it sends nothing (its place in the queue), for its borrower."""

    def __init__(self) -> None:
        self.waiting = ""

    def tell(self, message: str) -> None:
        self.waiting = message


class LentStream:
    """A lent stream: the pieces of a :class:`TextStream`, its borrower counted until it ends or is closed;
    ``waiting`` says its place in the queue while it waits for its turn (the server's keep-alives carry it)."""

    def __init__(self, stream: TextStream, release: Callable[[], None], notes: _Notes) -> None:
        self._stream = stream
        self._release = release
        self._notes = notes

    @property
    def waiting(self) -> str:
        return self._notes.waiting

    @property
    def result(self) -> GenerationResult | None:
        return self._stream.result

    def __iter__(self) -> Iterator[str]:
        try:
            for piece in self._stream:
                self._notes.waiting = ""
                yield piece
        finally:
            self._release()

    def stop(self) -> None:
        self._stream.stop()

    def close(self) -> None:
        try:
            self._stream.close()
        finally:
            self._release()


def _requester(request: AnswerRequest) -> str:
    named = request.extension.get("requester")
    name = named if isinstance(named, str) and named.strip() else request.requester
    return shown_name(message_name(published_name(name)), 200) or "another process"


class _LentAnswering:
    """The lending routes' view of a manager: held weakly, so the socket's thread keeps no manager alive."""

    def __init__(self, lending: Lending) -> None:
        self._lending = weakref.ref(lending)

    def _found(self) -> Lending:
        lending = self._lending()
        if lending is None:
            raise ManagerClosedError()
        return lending

    def models(self) -> list[dict[str, Any]]:
        return self._found().models()

    def stream(self, request: AnswerRequest) -> LentStream:
        return self._found().stream(request)

    def embed(self, model: str, texts: Sequence[str], requester: str,
              extension: Mapping[str, Any] | None = None) -> list[list[float]]:
        return self._found().embed(model, texts, requester, extension)


def lending_routes(lending: Lending) -> list[Any]:
    """The OpenAI-compatible routes a member serves on its socket, answering from ``lending`` (held weakly: the
    socket's thread keeps no manager alive)."""
    from .openai_routes import openai_routes

    return openai_routes(_LentAnswering(lending), heartbeat_s=LENDING_HEARTBEAT_S, max_running=LENDING_MAX_RUNNING)

