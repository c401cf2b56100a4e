"""Module paths from before the package was split into layers, still importable.

A configuration file may name a loader by its old path
(``loader: jupyter_llm_manager.demo_speech:load_tiny_asr``) and a notebook
may import an old module: :func:`install` adds an import hook that hands
out the module under its new path, the very same module object.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import sys
from types import ModuleType

__all__ = ["MOVED", "install"]

_PACKAGE = "jupyter_llm_manager"

#: Old module path (below the package) -> where it lives now.
MOVED = {
    "actions": "frontends.actions", "asking": "frontends.notebook.cell", "builtin": "models.builtin",
    "caches": "backends.transformers.converted", "catalog": "manager.registration", "chats": "frontends.notebook.chats",
    "cli": "frontends.cli", "commands": "frontends.notebook.line_commands",
    "dashboard": "frontends.dashboard", "demo": "models.demo", "demo_speech": "models.speech",
    "doctor": "frontends.doctor", "estimate": "estimates", "handles": "manager.handles", "holders": "support.referrers",
    "imports": "support.heavy_imports", "interpolate": "frontends.notebook.interpolate",
    "interrupts": "support.interrupts", "lab": "frontends.lab_bridge", "magic_args": "frontends.notebook.arguments",
    "magics": "frontends.notebook.magics", "memory": "devices", "plan_view": "frontends.views.plan",
    "planning": "manager.planning", "registry": "config.registry", "rendering": "frontends.notebook.rendering",
    "secret": "config.secrets", "settings": "config.settings", "spec": "config.spec", "tables": "frontends.views.table",
    "tasks": "config.tasks", "tiny": "models.tiny", "units": "support.units", "warmup": "manager.admission.warmup",
    "yaml_io": "config.bounded_yaml", "backends.hf": "backends.transformers.backend",
    "backends.hf_gguf": "backends.transformers.gguf", "backends.hf_support": "backends.transformers.support",
    "backends.llama_cpp_options": "backends.llama_cpp.options",
    "backends.llama_cpp_adapters": "backends.llama_cpp.adapters",
    "backends.llama_cpp_log": "backends.llama_cpp.log", "backends.openai_compat": "backends.openai.backend",
    "backends.openai_wire": "backends.openai.wire", "gguf_files": "gguf.files", "gguf_header": "gguf.header",
    "manager.waiting": "manager.admission.queue", "manager.loading": "manager.admission.loading",
    "manager.warmup": "manager.admission.warmup", "manager.evictions": "manager.unloading.evictions",
    "manager.freeing": "manager.unloading.freeing", "manager.keep_alive": "manager.unloading.keep_alive",
    "frontends.tables": "frontends.views.table", "frontends.plan_tables": "frontends.views.plan",
    "frontends.machine_tables": "frontends.views.machine", "frontends.machine_view": "frontends.machine_reader",
}


class _Moved(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds ``jupyter_llm_manager.<old>`` and loads it as the module at its new path."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        old = fullname.removeprefix(_PACKAGE + ".")
        if fullname == old or old not in MOVED:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(f"{_PACKAGE}.{MOVED[spec.name.removeprefix(_PACKAGE + '.')]}")

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when it was imported under its own name."""


_FINDER = _Moved()


def install() -> None:
    """Make the old paths importable (once per process)."""
    if _FINDER not in sys.meta_path:
        sys.meta_path.append(_FINDER)
