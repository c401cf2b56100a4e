"""The registry part of the manager's API: registering ids, aliases, tasks and pins; the configuration file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...config.files import ConfigFile, load_config
from ...config.spec import ModelSpec, expand_path
from ...config.tasks import Task
from ..generations import text_model

if TYPE_CHECKING:
    from ..wiring import Parts

__all__ = ["RegistryCalls"]


class RegistryCalls:
    """``register``, ``alias``, ``select``, ``pin``, ``read_config``, ``save`` and the names they know."""

    _parts: Parts

    if TYPE_CHECKING:
        def configure(self, **settings: Any) -> None: ...  # the settings part's (api.settings)

    def register(self, model_id: str, source: str | None = None, *, backend: str | None = None,
                 overwrite: bool = False, persist: bool = False, **options: Any) -> ModelSpec:
        """Register a model under ``model_id``; loads nothing. ``persist=True`` also saves it.

        ``base="ID", adapter="FOLDER"`` registers a LoRA adapter (a PEFT folder or Hub id; a GGUF LoRA file
        for a llama_cpp base) that runs on the registered model ``ID``, checked against it now.
        """
        data = {"source": source, "backend": backend, **options}
        spec = ModelSpec.from_mapping(model_id, {k: v for k, v in data.items() if v is not None})
        spec = self._parts.registration.register(spec, overwrite=overwrite)
        if persist:
            self._parts.persistence.save(models=[spec.id], aliases=(), settings=False)
        return spec

    def unregister(self, model_id: str, *, persist: bool = False) -> None:
        """Forget a model (or an alias), unloading its instance if no other id shares it."""
        self._parts.registration.unregister(model_id)
        if persist:
            self._parts.persistence.save(models=(), aliases=(), settings=False)

    def alias(self, name: str, target: str, *, overwrite: bool = False, persist: bool = False) -> None:
        """Make ``name`` another name of ``target`` (the same loaded instance)."""
        self._parts.registration.alias(name, target, overwrite=overwrite)
        if persist:
            self._parts.persistence.save(models=(), aliases=[name], settings=False)

    def select(self, task: str, option: str) -> None:
        """Point ``task`` at another of its options; the previous one is unloaded once idle, if unused."""
        self._parts.limits.retire(self._parts.tasks.select(task, option))

    def task(self, name: str) -> Task:
        """A task of the configuration: its options as written and its selected option when read."""
        return self._parts.tasks.task(name)

    def tasks(self) -> list[str]:
        return self._parts.tasks.tasks()

    def read_config(self, path: str | os.PathLike[str]) -> ConfigFile:
        """Register a configuration file's models and aliases and apply its settings; ``save()`` writes there."""
        config = load_config(Path(expand_path(os.fspath(path))))
        self._parts.registration.check_file_default(config)  # before anything of the file is taken
        self._parts.registration.read(config)
        self.configure(**{name: getattr(config.settings, name) for name in config.settings_given})
        self._parts.persistence.path = config.path
        return config

    def spec(self, model_id: str) -> ModelSpec:
        """The spec an id or alias resolves to."""
        return self._parts.registration.spec(model_id)

    def text_spec(self, model_id: str) -> ModelSpec:
        """The spec of a model that answers with text; else a
        :class:`~jupyter_llm_manager.errors.GenerationError` that says what it is (loads nothing)."""
        return text_model(self._parts.registration.spec(model_id))

    def resolve(self, model_id: str) -> str:
        """The registered id behind an id or alias (raises :class:`ModelNotFoundError`)."""
        return self._parts.registration.spec(model_id).id

    def ids(self) -> list[str]:
        """Registered ids, then aliases."""
        return self._parts.registration.ids()

    def pin(self, model_id: str) -> None:
        """Never evict this model (LRU, budget or keep-alive); it can still be unloaded by hand."""
        self._parts.registration.set_pinned(model_id, True)

    def unpin(self, model_id: str) -> None:
        self._parts.limits.after_unpin(self._parts.registration.set_pinned(model_id, False))

    @property
    def config_path(self) -> Path | None:
        """The file this manager read, and where ``save()`` writes by default (settable)."""
        return self._parts.persistence.path

    @config_path.setter
    def config_path(self, path: str | os.PathLike[str] | None) -> None:
        self._parts.persistence.path = None if path is None else Path(expand_path(os.fspath(path)))

    def save(self, path: str | os.PathLike[str] | None = None) -> Path:
        """Persist every setting, model (with its pinned flag) and alias (atomic write, merged under a lock)."""
        return self._parts.persistence.save(path)

