"""Where a model goes: a pure choice from its spec's ``device``, what the backend supports and the room.

``auto`` takes the visible GPU with the most room (evictions counted), else
the CPU; ``balanced`` or a list of GPUs spreads the model with a per-GPU
``max_memory``. A device that cannot be used is a
:class:`~jupyter_llm_manager.errors.ResourceNotAvailableError` at once:
waiting would not make a GPU appear.
"""

from __future__ import annotations

from ...backends.base import Placement
from ...errors import ResourceNotAvailableError
from .fit import Request, Snapshot, room_on

__all__ = ["place"]


def place(wanted: str | tuple[str, ...], kinds: set[str] | frozenset[str], snapshot: Snapshot,
          request: Request) -> Placement:
    """The devices for ``request`` given the spec's ``wanted`` device and the backend's device ``kinds``."""
    if request.remote:
        return Placement(())
    if wanted == "cpu" or (wanted == "auto" and set(kinds) == {"cpu"}):
        return Placement(("cpu",))
    gpus = [d for d in snapshot.devices if d.startswith("cuda")] if "cuda" in kinds else []
    if isinstance(wanted, tuple) or wanted == "balanced":
        chosen = list(wanted) if isinstance(wanted, tuple) else gpus
        _require_gpus(request.name, chosen, gpus)
        return Placement(tuple(chosen), max_memory={d: room_on(snapshot, d, request) for d in chosen})
    if wanted == "mps" or (wanted == "auto" and not gpus and "mps" in kinds):
        if "mps" not in kinds:
            raise ResourceNotAvailableError(f"{request.name!r} asks for device 'mps', which this machine's torch "
                                            "does not support; use device='cpu'", model_id=request.name)
        return Placement(("cpu",), target="mps")
    if wanted.startswith("cuda:"):
        _require_gpus(request.name, [wanted], gpus)
        return Placement((wanted,))
    if wanted == "cuda":
        _require_gpus(request.name, ["cuda"], gpus)
    if not gpus:
        return Placement(("cpu",))
    return Placement((max(gpus, key=lambda d: room_on(snapshot, d, request)),))


def _require_gpus(model_id: str, wanted: list[str], gpus: list[str]) -> None:
    if not gpus:
        raise ResourceNotAvailableError(
            f"{model_id!r} asks for a CUDA GPU but none is usable here (no GPU, no driver, or a CPU-only "
            "torch build: see `jupyter-llm-manager doctor`); use device='cpu' or 'auto'", model_id=model_id)
    missing = [d for d in wanted if d != "cuda" and d not in gpus]
    if missing:
        raise ResourceNotAvailableError(f"{model_id!r} asks for {', '.join(missing)}, which is not visible; "
                                        f"visible GPUs: {', '.join(gpus)}", model_id=model_id)
