"""The ``loader`` backend: any model, not only LLMs (speech recognizers and synthesizers beside LLMs).

``mgr.register("whisper", loader="my_package.speech:load_asr", kind="asr", required_memory="1.5GB")``:
the loader is an importable callable ``(spec) -> object``; whatever it
returns (a module, a pipeline, a tuple, a dict) is held as the model, and
takes part in everything the manager does: estimates, eviction, priority
tiers, pins, leases, keep-alive and freeing. Its size is the declared
``required_memory``, else measured: the device memory that appeared during
the load (CUDA allocated), or the bytes of the torch tensors it holds (CPU).
An optional ``unloader`` callable gets the model before the manager drops it.
Whatever the object's own code does while it is measured (a mock, an object
that claims to be a module, one whose ``parameters()`` raises), the load
counts what it can or is a one-line :class:`ModelLoadingError` naming the
loader; a weak proxy is refused (the manager must hold the model itself).
"""

from __future__ import annotations

import importlib
import itertools
import logging
import sys
import weakref
from collections.abc import Callable, Iterator
from typing import Any

from ..config.spec import ModelSpec
from ..devices import release_device_memory
from ..errors import ConfigurationError, ModelLoadingError, OutOfMemoryDuringLoad
from ..reports import MemoryEstimate
from ..support.units import format_bytes
from .base import Backend, LoadedModel, Placement, release_frames

__all__ = ["LoaderBackend", "import_callable"]

log = logging.getLogger(__name__)
_MAX_WALK = 10_000  # objects looked at when measuring what a loader returned


def import_callable(path: str, what: str, model_id: str) -> Callable[..., Any]:
    """``package.module:function`` imported (:class:`ModelLoadingError` saying what failed)."""
    module_name, _, attribute = path.partition(":")
    try:
        found: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            found = getattr(found, part)
    except (ImportError, AttributeError) as error:
        raise ModelLoadingError(f"the {what} {path!r} of {model_id!r} cannot be imported: {error}",
                                model_id=model_id) from None
    if not callable(found):
        raise ModelLoadingError(f"the {what} {path!r} of {model_id!r} is not callable", model_id=model_id)
    return found


class LoaderBackend(Backend):
    """Loads whatever an importable callable returns."""

    name = "loader"
    modes = frozenset({"chat"})  # no text interface: generate and stream say so (see modes.text_model)

    def validate(self, spec: ModelSpec) -> None:
        if not spec.loader:
            raise ConfigurationError(f"{spec.id!r}: the loader backend needs loader: package.module:function",
                                     model_id=spec.id, key="loader")

    def device_kinds(self) -> set[str]:
        torch = sys.modules.get("torch")  # a loader may use torch, but does not have to: never import it here
        return {"cpu", "cuda"} if torch is not None and torch.cuda.is_available() else {"cpu"}

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        if spec.required_memory is not None:
            size = spec.required_memory
            return MemoryEstimate(spec.id, size, 0, 0, size, "declared", "none",
                                  f"total set by required_memory ({format_bytes(size)})")
        return MemoryEstimate(spec.id, 0, 0, 0, 0, "unknown until loaded: measured then", "none", "none",
                              known=False)

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        """Call the loader; the footprint is declared, or measured on the placement's devices."""
        loader = import_callable(spec.loader or "", "loader", spec.id)
        if spec.unloader:
            import_callable(spec.unloader, "unloader", spec.id)  # a typo is found now, not at unload
        before = self.memory_in_use(placement.devices)
        try:
            model = loader(spec)
        except MemoryError as error:
            release_frames(error)
            raise OutOfMemoryDuringLoad(f"out of memory while {spec.loader} loaded {spec.id!r}",
                                        model_id=spec.id, devices=placement.devices) from None
        except Exception as error:
            release_frames(error)
            if type(error).__name__ == "OutOfMemoryError":
                raise OutOfMemoryDuringLoad(f"out of memory while {spec.loader} loaded {spec.id!r}",
                                            model_id=spec.id, devices=placement.devices) from None
            raise ModelLoadingError(f"{spec.loader} failed to load {spec.id!r}: {type(error).__name__}: {error}",
                                    model_id=spec.id) from error
        if model is None:
            raise ModelLoadingError(f"{spec.loader} returned None for {spec.id!r}: a loader returns the model",
                                    model_id=spec.id)
        if type(model) in weakref.ProxyTypes:  # the manager would hold nothing: the object lives (or died) elsewhere
            raise ModelLoadingError(f"{spec.loader} returned a weak proxy for {spec.id!r}: the manager must hold the "
                                    "model itself (return the object, not weakref.proxy(...))", model_id=spec.id)
        declared = spec.required_memory
        try:
            measured = self._measured(model, placement, before)
        except Exception as error:  # noqa: BLE001 - the object's own code failed while its tensors were counted
            release_frames(error)
            if declared is None:
                raise ModelLoadingError(
                    f"{spec.loader} returned a {type(model).__name__} for {spec.id!r} whose tensors cannot be "
                    f"counted ({type(error).__name__}: {error}): declare its size with required_memory",
                    model_id=spec.id) from None
            measured = {}
        footprint = ({placement.devices[0]: declared} if placement.devices else {}) if declared is not None \
            else measured
        return LoadedModel(model=model, footprint=footprint, complete_footprint=declared is not None,
                           measured_bytes=sum(measured.values()),
                           details={"kind": spec.kind, "loader": spec.loader, "unloader": spec.unloader,
                                    "type": type(model).__name__})

    def _measured(self, model: Any, placement: Placement, before: dict[str, int]) -> dict[str, int]:
        after = self.memory_in_use(placement.devices)
        measured = {d: after[d] - before.get(d, 0) for d in after if after[d] > before.get(d, 0)}
        for device, size in _tensor_bytes(model).items():
            if device not in measured:
                measured[device] = size
        return measured or {"cpu": 0}

    def unload(self, loaded: LoadedModel) -> None:
        """The unloader (when there is one) first, then the manager drops its reference."""
        unloader = loaded.details.get("unloader")
        model, loaded.model = loaded.model, None
        if unloader and model is not None:
            try:
                import_callable(unloader, "unloader", "?")(model)
            except Exception as error:  # noqa: BLE001 - the model is dropped whatever its unloader did
                log.warning("the unloader %s failed: %s", unloader, error)

    def memory_in_use(self, devices: tuple[str, ...]) -> dict[str, int]:
        torch = sys.modules.get("torch")
        if torch is None or not torch.cuda.is_initialized():
            return {}
        return {d: int(torch.cuda.memory_allocated(torch.device(d))) for d in devices if d.startswith("cuda")}

    def release_memory(self, devices: tuple[str, ...]) -> None:
        release_device_memory(sys.modules.get("torch"), devices)


def _tensor_bytes(model: Any) -> dict[str, int]:
    """Bytes of the torch tensors reachable from what a loader returned (modules, pipelines, tuples, dicts)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    seen: set[int] = set()
    sizes: dict[str, int] = {}
    for tensor in itertools.islice(_tensors(model, torch), _MAX_WALK):
        if tensor.data_ptr() in seen:
            continue
        seen.add(tensor.data_ptr())
        device = "cpu" if tensor.device.type in ("cpu", "mps") else str(tensor.device)
        sizes[device] = sizes.get(device, 0) + tensor.nbytes
    return sizes


def _tensors(model: Any, torch: Any) -> Iterator[Any]:
    """The tensors reachable from ``model``, walked without recursion and without calling its attributes'
    code: a mock or a lazy proxy that makes a new object for every attribute asked ends the walk, never
    the process (``_MAX_WALK`` objects at most). An object is a module or a tensor by its real type, not
    the ``__class__`` it claims (``Mock(spec=torch.nn.Module)`` is neither)."""
    stack: list[Any] = [model]
    visited: set[int] = set()
    while stack and len(visited) < _MAX_WALK:
        value = stack.pop()
        if id(value) in visited:
            continue
        visited.add(id(value))
        kind = type(value)  # never isinstance: a mock or a proxy claims any class through its __class__
        if issubclass(kind, torch.nn.Module):
            yield from itertools.chain(value.parameters(), value.buffers())
        elif issubclass(kind, torch.Tensor):
            yield value
        elif type(value) is dict:
            stack.extend(value.values())
        elif type(value) in (list, tuple):
            stack.extend(value)
        elif not isinstance(value, type):  # a transformers pipeline keeps its model as an instance attribute
            found = _instance_attribute(value, "model")
            if found is not None:
                stack.append(found)


def _instance_attribute(value: Any, name: str) -> Any:
    """``value``'s own attribute ``name``, from its instance dict only: no property, ``__getattr__`` or
    ``__getattribute__`` of the object runs."""
    try:
        own = object.__getattribute__(value, "__dict__")
    except (AttributeError, TypeError):
        return None
    return own.get(name) if type(own) is dict else None
