"""What a save writes: this process's changes merged into the file as it is now.

Other kernels save into the same file, and its user edits it. The merge
loses none of their work:

- an entry this process does not save is kept as the file has it, as written
  (comments, order, quoting: see :mod:`.round_trip`); an entry it saves is
  rewritten only where it differs from the file;
- an id goes only when this process removed it (``removed``), with the
  aliases that named it (they would point to nothing); a model replaces an
  alias of the same name (registering it replaced the alias);
- ``defaults`` replace the file's settings one by one; ``tasks`` replace those
  tasks; ``inference`` replaces that block.

A file in another layout is converted to ours once, the original kept as ``.bak``.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ruamel.yaml.error import YAMLError

from ..errors import ConfigurationError
from ..support.units import excerpt
from .bounded_yaml import YamlProblem, load_yaml
from .layouts import ConfigFile, parse_document
from .round_trip import Document, Same
from .settings import ManagerSettings, check_setting
from .spec import ModelSpec

__all__ = ["TOP_LEVEL", "Changes", "merged_text"]

log = logging.getLogger(__name__)

#: The blocks of our layout, in the order a new file has them.
TOP_LEVEL = ("defaults", "models", "aliases", "tasks", "inference")


@dataclass(frozen=True)
class Changes:
    """What one save writes: models and aliases, what was removed, and (when given) the settings and tasks."""

    models: Mapping[str, ModelSpec] = field(default_factory=dict)
    aliases: Mapping[str, str] = field(default_factory=dict)
    removed: frozenset[str] = frozenset()
    defaults: Mapping[str, Any] | None = None
    tasks: Mapping[str, Mapping[str, Any]] | None = None
    inference: Mapping[str, Any] | None = None


def merged_text(path: Path, text: str, data: Any, changes: Changes) -> str:
    """The new text of the file at ``path``, which now holds ``text`` (``data`` once parsed), with ``changes``.

    The file is edited in place when it is in our layout; the edit is used
    only if it reads back (with the bounded loader) exactly as the same merge
    of the plain data, else that plain merge is written, without comments.
    """
    current = parse_document(data, path)
    if current.layout not in ("ours", "empty"):
        converted = _converted(path, text, current)
        _apply(converted, current, changes)
        return converted.text()
    plain = Document.plain(data, order=TOP_LEVEL)
    _apply(plain, current, changes)
    edited = _edited(path, text, data)
    if edited is None or not edited.keeps_comments:
        return plain.text()
    _apply(edited, current, changes)
    result = edited.text()
    if not _reads_as(result, plain.root):
        log.warning("%s: the comments could not be kept (the edited text would not read back as intended); "
                    "the file is rewritten without them", path)
        return plain.text()
    return result


def _reads_as(text: str, data: Any) -> bool:
    """Whether ``text``, read by the bounded loader, is ``data``."""
    try:
        return bool((load_yaml(text) or {}) == data)
    except YamlProblem:
        return False


def _apply(document: Document, current: ConfigFile, changes: Changes) -> None:
    """Merge ``changes`` into ``document``, whose file holds ``current`` (a new file if its layout is empty)."""
    empty_already = {name for name in TOP_LEVEL if name in document.root and not document.root[name]}
    _remove(document, changes.removed)
    written_models = document.block("models") or {}
    for model_id, spec in changes.models.items():
        document.drop("aliases", model_id)
        entry = _entry(spec, written_models.get(model_id))
        document.put("models", model_id, entry, same=_same_spec(current.models.get(model_id), spec))
    for alias, target in changes.aliases.items():
        document.put("aliases", alias, target)
    _put_defaults(document, changes.defaults or {}, every=current.layout == "empty")
    for name, task in (changes.tasks or {}).items():
        document.put("tasks", name, task, same=_same_task(current, name))
    if changes.inference is not None:
        document.set("inference", dict(changes.inference))
    for name in TOP_LEVEL:
        if name not in empty_already:
            document.drop_if_empty(name)


def _edited(path: Path, text: str, data: Any) -> Document | None:
    """The file's own document, to edit in place; None when the round-trip parser refuses it."""
    try:
        return Document.edit(text, data, order=TOP_LEVEL)
    except YAMLError as error:  # what PyYAML accepts and ruamel.yaml does not: comments are lost, not the data
        log.warning("%s: the comments cannot be kept (%s); the file is rewritten without them", path,
                    excerpt(str(error).splitlines()[0] if str(error) else type(error).__name__))
        return None


def _converted(path: Path, text: str, current: ConfigFile) -> Document:
    """Our layout, converted from another one; the original is kept as ``.bak`` (once)."""
    backup = path.with_name(path.name + ".bak")
    if not backup.exists():
        backup.write_text(text, encoding="utf-8")
        shutil.copymode(path, backup)
    log.warning("%s was in another manager's layout (%s); it is now saved in ours, with the original kept as %s",
                path, current.layout, backup)
    blocks = {
        "models": {i: s.to_mapping() for i, s in current.models.items() if not s.task},
        "aliases": {a: t for a, t in current.aliases.items() if a not in current.tasks},
        "tasks": {name: task.to_mapping() for name, task in current.tasks.items()},
        "inference": dict(current.inference),
    }
    return Document.plain({name: block for name, block in blocks.items() if block}, order=TOP_LEVEL)


def _remove(document: Document, removed: frozenset[str]) -> None:
    """Drop what this process removed, and the aliases that named it."""
    for name in removed:
        document.drop("models", name)
        document.drop("aliases", name)
    aliases = document.block("aliases") or {}
    for alias in [alias for alias, target in aliases.items() if target in removed]:
        document.drop("aliases", alias)


def _put_defaults(document: Document, defaults: Mapping[str, Any], *, every: bool) -> None:
    """The settings, one by one: ``every`` one in a new file; a file with content gains only those that differ
    from the built-in defaults."""
    written = document.block("defaults") or {}
    built_in = ManagerSettings().to_mapping()
    for key, value in defaults.items():
        same = _same_setting(key)
        if not every and key not in written and key in built_in and same(built_in[key], value):
            continue
        document.put("defaults", key, value, same=same)


def _entry(spec: ModelSpec, written: Any) -> dict[str, Any]:
    """What the file's entry for ``spec`` should say; ``backend`` only where the file has it or it is needed."""
    entry = spec.to_mapping(warn=True)
    if isinstance(written, Mapping) and "backend" not in written:
        without = {key: value for key, value in entry.items() if key != "backend"}
        try:
            if ModelSpec.from_mapping(spec.id, without, check_paths=False).backend == spec.backend:
                return without
        except ConfigurationError:
            pass
    return entry


def _same_spec(written: ModelSpec | None, spec: ModelSpec) -> Same:
    """An entry is unchanged when the file's says the same spec and the spec saves whole (no literal secret)."""
    def same(old: Any, new: Any) -> bool:
        return written is not None and written == spec and _saves_whole(spec)

    return same


def _saves_whole(spec: ModelSpec) -> bool:
    """Whether saving ``spec`` and reading it back gives it again (a literal secret is never saved)."""
    try:
        return ModelSpec.from_mapping(spec.id, spec.to_mapping(), check_paths=False) == spec
    except ConfigurationError:
        return False


def _same_setting(name: str) -> Same:
    """A setting is unchanged when the file's value means the same (``30m`` and ``1800``)."""
    def same(old: Any, new: Any) -> bool:
        try:
            return bool(check_setting(name, old) == check_setting(name, new))
        except (KeyError, ValueError):
            return False

    return same


def _same_task(current: ConfigFile, name: str) -> Same:
    """A task is unchanged when the file's, saved again, is what is saved now."""
    written = current.tasks.get(name)

    def same(old: Any, new: Any) -> bool:
        return written is not None and written.to_mapping() == new

    return same
