"""What the manager hands out: handles that never keep a model alive on their own.

- :class:`ModelHandle` (from ``load``) holds an id and a weak reference to the
  manager; it stays valid across unloads.
- :class:`Lease` (from ``use``) gives ``.model`` and ``.tokenizer`` inside a
  ``with`` block; the model is never evicted while a lease is held, and the
  lease forgets the model when the block ends.
- :class:`~.generations.TextStream` (from ``stream``) is the generation path's.

They reach the manager through the small protocols below, never by importing it.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import LLMManagerError, ModelNotFoundError
from ..generation import GenerationResult, Prompt

if TYPE_CHECKING:
    from typing_extensions import Self

    from ..backends.base import LoadedModel
    from ..config.spec import ModelSpec
    from ..reports import StatusRow, UnloadReport
    from .state import Ticket

__all__ = ["Lease", "ModelHandle", "ModelOwner"]


class ModelOwner(Protocol):
    """What a :class:`ModelHandle` asks of its manager (:class:`~.facade.LLMManager` is one)."""

    def row(self, model_id: str) -> StatusRow: ...

    def use(self, model_id: str, *, wait: float | str | None = ...) -> Lease: ...

    def generate(self, model_id: str, prompt: Prompt, **params: Any) -> GenerationResult: ...

    def unload(self, model_id: str, *, wait: float | str = ...) -> UnloadReport | None: ...


class ModelHandle:
    """A model id bound to its manager; holds no model object."""

    def __init__(self, manager: ModelOwner, model_id: str) -> None:
        self.id = model_id
        self._manager = weakref.ref(manager)

    @property
    def manager(self) -> ModelOwner:
        manager = self._manager()
        if manager is None:
            raise LLMManagerError(f"the manager of {self.id!r} is gone")
        return manager

    def status(self) -> StatusRow:
        return self.manager.row(self.id)

    def use(self, **options: Any) -> Lease:
        return self.manager.use(self.id, **options)

    def generate(self, prompt: Prompt, **params: Any) -> GenerationResult:
        return self.manager.generate(self.id, prompt, **params)

    def unload(self, **options: Any) -> UnloadReport | None:
        return self.manager.unload(self.id, **options)

    def __repr__(self) -> str:
        manager = self._manager()
        state: str
        try:
            state = manager.row(self.id).state if manager is not None else "manager gone"
        except ModelNotFoundError:
            state = "unregistered"
        return f"<ModelHandle {self.id!r}: {state}>"


class Lease:
    """``with manager.use(id) as lm``: the loaded model, protected from eviction."""

    def __init__(self, model_id: str, acquire: Callable[[], Ticket], spec: Callable[[], ModelSpec]) -> None:
        self.id = model_id
        self._acquire = acquire
        self._spec = spec
        self._ticket: Ticket | None = None

    def __enter__(self) -> Self:
        if self._ticket is not None:
            raise LLMManagerError("this lease is already held; call use() again for another")
        self._ticket = self._acquire()
        return self

    def __exit__(self, *exc_info: object) -> None:
        ticket, self._ticket = self._ticket, None
        if ticket is not None:
            ticket.release()

    @property
    def held(self) -> bool:
        """Whether the lease is held now (inside the ``with`` block)."""
        return self._ticket is not None

    @property
    def loaded(self) -> LoadedModel:
        ticket = self._ticket
        if ticket is None:
            raise LLMManagerError(f"the lease on {self.id!r} is not held: use it inside `with manager.use(...)`")
        return ticket.loaded

    @property
    def model(self) -> Any:
        return self.loaded.model

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    @property
    def spec(self) -> ModelSpec:
        return self._spec()

    def __repr__(self) -> str:
        return f"<Lease {self.id!r} {'held' if self._ticket is not None else 'released'}>"
