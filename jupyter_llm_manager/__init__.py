"""Keep large language models resident in a Jupyter kernel, and manage them.

``%load_ext jupyter_llm_manager`` adds the ``%%llm`` magics; in plain Python::

    from jupyter_llm_manager import LLMManager
    mgr = LLMManager(max_loaded_models=2, keep_alive="10m")
    mgr.register("a", source="./models/tiny-a")
    print(mgr.generate("a", "Hello", max_new_tokens=20).text)

Importing this package imports neither torch nor IPython.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from .config.secrets import Secret
from .config.settings import ManagerSettings
from .config.spec import ModelSpec
from .errors import (
    ConfigurationError,
    GenerationError,
    InvalidGenerationParameters,
    LLMManagerError,
    ManagerClosedError,
    ModelInUseError,
    ModelLoadingError,
    ModelNotFoundError,
    ModelUnloadedError,
    ResourceNotAvailableError,
    WrongModelKind,
)
from .events import Event
from .generation import GenerationParams, GenerationResult
from .manager.facade import LLMManager
from .manager.generations import TextStream
from .manager.handles import Lease, ModelHandle
from .manager.kernel import get_manager
from .reports import DeviceReport, GarbageReport, MemoryEstimate, StatusRow, UnloadReport
from .support.moved import install as _keep_old_module_paths

if TYPE_CHECKING:
    from .frontends.dashboard import Dashboard

__version__ = "0.1.0"

_keep_old_module_paths()


def _jupyter_labextension_paths() -> list[dict[str, str]]:
    """Where JupyterLab finds the built extension (``jupyter labextension develop`` uses it)."""
    return [{"src": "labextension", "dest": "jupyter-llm-manager"}]


def open_dashboard(manager: LLMManager | None = None, **options: Any) -> Dashboard:
    """A live ipywidgets dashboard of ``manager`` (the kernel's manager by default); ``%llm dashboard`` too."""
    from .frontends.dashboard import Dashboard

    return Dashboard(manager, **options)


def serve(host: str = "127.0.0.1", port: int = 0, *, announce: Callable[[Any], None] | None = None) -> None:
    """An OpenAI-compatible endpoint for other tools, over a manager of its own, until Ctrl-C or SIGTERM (blocks;
    ``jupyter-llm-manager serve`` runs it). ``announce`` is told the URL and token once it listens."""
    from .manager.sharing.serving import serve as run

    run(host, port, announce=announce or (lambda served: None))


def load_ipython_extension(ipython: object) -> None:
    """``%load_ext jupyter_llm_manager``: the ``%%llm`` and ``%llm`` magics."""
    from .frontends.notebook.magics import load_ipython_extension as load

    load(ipython)


def unload_ipython_extension(ipython: object) -> None:
    """``%unload_ext jupyter_llm_manager``: remove the magics; loaded models stay."""
    from .frontends.notebook.magics import unload_ipython_extension as unload

    unload(ipython)


__all__ = [
    "ConfigurationError",
    "DeviceReport",
    "Event",
    "GarbageReport",
    "GenerationError",
    "GenerationParams",
    "GenerationResult",
    "InvalidGenerationParameters",
    "LLMManager",
    "LLMManagerError",
    "Lease",
    "ManagerClosedError",
    "ManagerSettings",
    "MemoryEstimate",
    "ModelHandle",
    "ModelInUseError",
    "ModelLoadingError",
    "ModelNotFoundError",
    "ModelSpec",
    "ModelUnloadedError",
    "ResourceNotAvailableError",
    "Secret",
    "StatusRow",
    "TextStream",
    "UnloadReport",
    "WrongModelKind",
    "get_manager",
    "open_dashboard",
    "serve",
]
