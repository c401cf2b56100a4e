"""What the dashboard shows beside its tables (:mod:`.views`): why no GPU is listed, the outcome of an action."""

from __future__ import annotations

import time

from ..support.heavy_imports import ready
from .views.style import MUTED, WARNING, text

__all__ = ["message_html", "no_gpu_note"]


def no_gpu_note() -> str:
    """Why no GPU is listed, in one muted line."""
    from ..devices import nvml_error

    reason = nvml_error() or "no NVIDIA GPU reported"
    torch = ready("torch")
    if torch is not None and not torch.cuda.is_available():
        reason += f"; torch {torch.__version__} sees no CUDA device"
    return (f"<div style='{MUTED}'>No GPU visible to this kernel ({text(reason)}). Models run on the CPU; "
            "run <code>jupyter-llm-manager doctor</code> to see why.</div>")


def message_html(when: float, failed: bool, said: str) -> str:
    """One outcome of an action, timed, red when it failed."""
    color = f"color:{WARNING}" if failed else MUTED
    return (f"<div style='{color}; white-space:pre-wrap'>{time.strftime('%H:%M:%S', time.localtime(when))} "
            f"{text(said)}</div>")
