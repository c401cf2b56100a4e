"""The backend of a LoRA adapter that lives on its base's loaded model: the base's backend, bound to that instance.

Putting an adapter on the model and taking it off change the model every
request of the base runs on, so both happen in the base's turn (between
requests): the adapter's instance shares the base's :class:`~..instances.Turns`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence

from ...backends.base import Backend, ContextGrowth, LoadedModel, Placement, TextGenerator
from ...config.spec import ModelSpec
from ...errors import ModelLoadingError
from ...generation import GenerationParams, GenerationResult, Prompt
from ...reports import MemoryEstimate
from ...support.deadlines import Deadline
from ..instances import Instance, TurnHeld

__all__ = ["AdapterOnBase", "between_requests"]


class AdapterOnBase(Backend):
    """Loads an adapter onto ``base_instance``'s model and runs it there; everything else is ``backend``'s."""

    adapters = "shared"

    def __init__(self, backend: Backend, base_instance: Instance) -> None:
        self.backend = backend
        self.base_instance = base_instance

    def device_kinds(self) -> set[str]:
        return self.backend.device_kinds()

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        return self.backend.estimate(spec)  # the base plus the adapter; its slice is the adapter's part

    def context_growth(self, spec: ModelSpec) -> ContextGrowth | None:
        return None

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        base = self.base_instance
        with between_requests(base):
            loaded = base.loaded
            if loaded is None or base.state != "loaded":
                raise ModelLoadingError(f"the base of {spec.id!r} is no longer loaded", model_id=spec.id)
            return self.backend.attach_adapter(loaded, spec)

    def unload(self, loaded: LoadedModel) -> None:
        with between_requests(self.base_instance):
            self.backend.detach_adapter(loaded)

    def use_adapter(self, loaded: LoadedModel) -> None:
        self.backend.use_adapter(loaded)

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        return self.backend.stream(loaded, prompt, params, model_id=model_id, raw=raw, stop=stop)

    def generate(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
                 model_id: str, raw: bool) -> GenerationResult:
        return self.backend.generate(loaded, prompt, params, model_id=model_id, raw=raw)

    def embed(self, loaded: LoadedModel, texts: Sequence[str], *, model_id: str) -> list[list[float]]:
        return self.backend.embed(loaded, texts, model_id=model_id)

    def memory_in_use(self, devices: tuple[str, ...]) -> dict[str, int]:
        return self.backend.memory_in_use(devices)

    def release_memory(self, devices: tuple[str, ...]) -> None:
        self.backend.release_memory(devices)


class between_requests:
    """Hold the base's turn: no request of the base or of its adapters runs meanwhile.

    A thread that holds the turn already (it iterates a stream of the same
    base) goes ahead in its own turn.
    """

    def __init__(self, base: Instance) -> None:
        self._turns = base.turns
        self._ticket: int | None = None

    def __enter__(self) -> None:
        try:
            self._ticket = self._turns.take(Deadline(math.inf, time.monotonic), _quiet)
        except TurnHeld:
            self._ticket = None

    def __exit__(self, *exc_info: object) -> None:
        if self._ticket is not None:
            self._turns.give(self._ticket)


def _quiet(position: int) -> None:
    """Nobody is told: a load or unload waits for the request in progress, briefly."""
