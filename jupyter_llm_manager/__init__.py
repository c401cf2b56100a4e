"""Keep large language models resident in a Jupyter kernel, and manage them.

``%load_ext jupyter_llm_manager`` adds the ``%%llm`` magics; in plain Python::

    from jupyter_llm_manager import LLMManager
    mgr = LLMManager(max_loaded_models=2, keep_alive="10m")
    mgr.register("a", source="./models/tiny-a")
    print(mgr.generate("a", "Hello", max_new_tokens=20).text)

Importing this package imports neither torch nor IPython.
"""

from __future__ import annotations

from . import dashboard  # a callable module: jupyter_llm_manager.dashboard() opens one
from .errors import (
    ConfigurationError,
    GenerationError,
    InvalidGenerationParameters,
    LLMManagerError,
    ModelInUseError,
    ModelLoadingError,
    ModelNotFoundError,
    ResourceNotAvailableError,
)
from .estimate import MemoryEstimate
from .events import Event
from .generation import GenerationParams, GenerationResult
from .handles import Lease, ModelHandle, TextStream
from .manager import LLMManager, get_manager
from .memory import DeviceReport
from .reports import GarbageReport, StatusRow, UnloadReport
from .spec import ModelSpec, Secret

__version__ = "0.1.0"


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the built extension (``jupyter labextension develop`` uses it)."""
    return [{"src": "labextension", "dest": "jupyter-llm-manager"}]


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext jupyter_llm_manager``: the ``%%llm`` and ``%llm`` magics."""
    from .magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext jupyter_llm_manager``: remove the magics; loaded models stay."""
    from .magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "LLMManager", "ModelSpec", "get_manager",
    "LLMManagerError", "ConfigurationError", "ModelNotFoundError", "ModelLoadingError",
    "ResourceNotAvailableError", "GenerationError", "InvalidGenerationParameters", "ModelInUseError",
    "GenerationParams", "GenerationResult", "MemoryEstimate", "StatusRow", "DeviceReport", "UnloadReport",
    "GarbageReport", "Event", "ModelHandle", "Lease", "TextStream", "Secret", "dashboard",
]
