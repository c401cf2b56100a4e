"""Adapters in the manager: their specs from their base, their leases with their base's, their asks to the policy.

- :meth:`Adapters.derive`: at registration, an adapter's spec takes its
  base's loading fields; a missing base or adapter, a remote base, an adapter
  on an adapter, or an adapter that does not fit its base (another
  architecture or size) is one :class:`ConfigurationError`, nothing loaded.
- :meth:`Adapters.acquire`: a lease on an adapter that shares its base holds
  a lease on the base too (taken first: the base loads, or stays, while the
  adapter is used; its row shows ``loaded``); released together.
- :meth:`Adapters.bind`: the backend its instance loads with, bound to the
  loaded base (:class:`~.binding.AdapterOnBase`).
- :func:`adapter_ask`: the policy sees the adapter as a slice of its base:
  its own bytes, on the base's devices, outside the count cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ...backends.base import Backend
from ...config.spec import ModelSpec
from ...errors import ConfigurationError, LLMManagerError
from ...estimates import adapter_slice
from ...support.deadlines import Deadline
from ..policy.decision import Ask
from ..state import ManagerState, Ticket
from .binding import AdapterOnBase, between_requests

__all__ = ["Adapters", "adapter_ask"]


class Adapters:
    """Registration, leases and backends of the adapters of one manager."""

    def __init__(self, state: ManagerState, backends: Callable[[str], Backend],
                 acquire: Callable[[str, Deadline], Ticket]) -> None:
        self._state = state
        self._backends = backends
        self._acquire = acquire

    # -- registration ------------------------------------------------------------------------------

    def derive(self, spec: ModelSpec) -> ModelSpec:
        """``spec`` with its base's loading fields when it is an adapter, checked (headers only)."""
        if spec.base is None:
            return spec
        base = self._base_spec(spec)
        backend = self._backends(base.backend)
        if backend.remote or backend.adapters is None:
            where = "is served by a remote server" if backend.remote else f"runs on the {base.backend} backend"
            raise ConfigurationError(f"{spec.id!r}: its base {base.id!r} {where}, which runs no LoRA adapters here; "
                                     "give a transformers or llama_cpp model as base (the server may load the "
                                     "adapter itself)", model_id=spec.id, key="base")
        derived = spec.on_base(base)
        backend.check_adapter(derived, base)
        return derived

    def _base_spec(self, spec: ModelSpec) -> ModelSpec:
        state = self._state
        with state.lock:
            registry = state.registry
            try:
                return registry.specs[registry.resolve(spec.base or "")]
            except LLMManagerError:
                close = registry.close_matches(spec.base or "")
        hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ": register the base model first"
        raise ConfigurationError(f"{spec.id!r}: its base {spec.base!r} is not registered{hint}",
                                 model_id=spec.id, key="base")

    def rederived(self, base: ModelSpec) -> list[ModelSpec]:
        """The adapters registered on ``base``'s id, taking their loading fields from its new spec. Lock held."""
        registry = self._state.registry
        return [spec.detached().on_base(base) for spec in registry.specs.values() if spec.base == base.id]

    def on(self, model_id: str) -> list[str]:
        """The adapter ids registered on ``model_id``. Lock held."""
        return [spec.id for spec in self._state.registry.specs.values() if spec.base == model_id]

    # -- leases ------------------------------------------------------------------------------------

    def acquire(self, model_id: str, deadline: Deadline, *, activate: bool = False) -> Ticket:
        """A lease on ``model_id``; for an adapter on a shared base, with the base's lease (taken first).

        ``activate`` (a ``use()`` lease): the shared model is made to answer as
        ``model_id`` before it is handed out; the next request on the same base
        may switch it.
        """
        base_id = self._shared_base(model_id)
        if base_id is None:
            ticket = self._acquire(model_id, deadline)
        else:
            base = self._acquire(base_id, deadline)
            try:
                ticket = self._acquire(model_id, deadline)
            except BaseException:
                base.release()
                raise
            ticket.companion = base
        if activate:
            self._activate(ticket)
        return ticket

    def _shared_base(self, model_id: str) -> str | None:
        state = self._state
        with state.lock:
            spec = state.registry.specs[state.registry.resolve(model_id)]
        if spec.base is None or self._backends(spec.backend).adapters != "shared":
            return None
        return spec.base

    def _activate(self, ticket: Ticket) -> None:
        instance = ticket.instance
        if instance.base is None and not instance.has_adapters:
            return
        base = ticket.companion.instance if ticket.companion is not None else instance
        try:
            with between_requests(base):
                instance.backend.use_adapter(ticket.loaded)
        except BaseException:
            ticket.release()
            raise

    # -- instances ---------------------------------------------------------------------------------

    def bind(self, spec: ModelSpec, backend: Backend) -> Backend:
        """The backend an instance of ``spec`` loads with: bound to the loaded base for a shared adapter.

        The base (leased by the calling thread: see :meth:`acquire`) takes turns
        with its adapters from now on.
        """
        if spec.base is None or backend.adapters != "shared":
            return backend
        state = self._state
        with state.lock:
            key = state.registry.keys[state.registry.resolve(spec.base)]
            base = state.instances.get(key)
            if base is None or base.state != "loaded":
                raise ConfigurationError(f"{spec.id!r}: its base {spec.base!r} is not loaded; use the adapter's id "
                                         "(its base loads with it)", model_id=spec.id)
            base.take_adapters()  # its requests take turns with the adapters', after those in flight
        return AdapterOnBase(backend, base)


def adapter_ask(state: ManagerState, spec: ModelSpec, backend: Backend, ask: Ask) -> Ask:
    """The policy's view of an adapter sharing its base: its own bytes, on the base's devices. Lock held.

    A base not loaded yet (a plan that loads it first) is placed as its spec says.
    """
    if spec.base is None or backend.adapters != "shared":
        return ask
    registry = state.registry
    base_id = registry.resolve_quiet(spec.base)
    if base_id is None:
        return ask
    key = registry.keys[base_id]
    base = state.instances.get(key)
    devices = base.placement.devices if base is not None else ()
    wanted = (devices if len(devices) > 1 else devices[0]) if devices else registry.specs[base_id].device
    return replace(ask, estimate=adapter_slice(ask.estimate), base=key, wanted=wanted)
