"""A model that is listed but cannot load here: it says why and how to fix it, instead of failing obscurely.

Used by the built-in ``smollm2`` when its wheel is not installed: the id is
still there (so notebooks and ``%llm list`` can name it), and any use raises
:class:`~jupyter_llm_manager.errors.ModelLoadingError` with the one command
that makes it work.
"""

from __future__ import annotations

from ..config.spec import ModelSpec
from ..errors import ModelLoadingError
from ..reports import MemoryEstimate
from .base import Backend, LoadedModel, Placement

__all__ = ["UnavailableBackend"]


class UnavailableBackend(Backend):
    """Loads nothing; its spec's ``options['reason']`` says why."""

    name = "unavailable"

    def problem(self, spec: ModelSpec) -> str | None:
        return str(spec.options.get("reason") or "this model cannot be loaded here")

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        return MemoryEstimate(spec.id, 0, 0, 0, 0, "unknown: not installed", "unknown", "unknown", known=False)

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        raise ModelLoadingError(f"{spec.id!r} cannot be loaded: {self.problem(spec)}", model_id=spec.id)
