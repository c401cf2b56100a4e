"""LoRA adapters in the manager: the one rule that says whether one shares its base, their specs, the policy's view.

- :func:`shares_base`: an adapter id whose backend keeps adapters on the base's
  loaded model (``transformers``: PEFT). Its lease holds a lease on the base
  (admission takes it first), its instance is a slice of the base's memory
  and takes turns with the base (:mod:`.binding`).
- :class:`AdapterSpecs`: at registration, an adapter's spec takes its base's
  loading fields; a missing base or adapter, a remote base, an adapter on an
  adapter, or an adapter that does not fit its base (another architecture or
  size) is one :class:`ConfigurationError`, nothing loaded.
- :func:`adapter_ask`: the policy sees a shared adapter as a slice of its
  base: its own bytes, on the base's devices, outside the count cap.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from ...backends.base import Backend
from ...config.spec import ModelSpec
from ...errors import ConfigurationError, LLMManagerError
from ...estimates import adapter_slice
from ..policy.decision import Ask
from ..state import ManagerState

__all__ = ["AdapterSpecs", "adapter_ask", "shares_base"]


def shares_base(spec: ModelSpec, backend: Backend) -> bool:
    """Whether ``spec`` is a LoRA adapter that lives on its base's loaded model (one model, its turns)."""
    return spec.base is not None and backend.adapters == "shared"


class AdapterSpecs:
    """The specs of the adapters of one manager: derived from their base, checked at registration."""

    def __init__(self, state: ManagerState, backends: Callable[[str], Backend]) -> None:
        self._state = state
        self._backends = backends

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


def adapter_ask(state: ManagerState, spec: ModelSpec, backend: Backend, ask: Ask) -> Ask:
    """The policy's view of an adapter sharing its base: its own bytes, on the base's devices. Lock held.

    A base not loaded yet (a plan that loads it first) is placed as its spec says.
    """
    if not shares_base(spec, backend):
        return ask
    registry = state.registry
    base_id = registry.resolve_quiet(spec.base or "")
    if base_id is None:
        return ask
    key = registry.keys[base_id]
    base = state.instances.get(key)
    devices = base.placement.devices if base is not None else ()
    wanted = (devices if len(devices) > 1 else devices[0]) if devices else registry.specs[base_id].device
    return replace(ask, estimate=adapter_slice(ask.estimate), base=key, wanted=wanted, growth=None)
