"""The YAML registry file: where it is, what it says, and saving it safely.

One file, found in this order: an explicit path, ``$JUPYTER_LLM_MANAGER_CONFIG``,
``~/.jupyter/llm_manager.yaml``. Three layouts are read: ours (see the README)
and the two that older in-house managers write, so their files work
unchanged. Saving always writes our layout, atomically (temporary file, then
rename) under a lock file, merging with what other kernels saved meanwhile.
"""

from __future__ import annotations

import difflib
import logging
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from filelock import FileLock, Timeout

from ..errors import ConfigurationError
from ..support.units import brief
from .bounded_yaml import MAX_FILE_BYTES, YamlProblem, dump_yaml, load_yaml
from .settings import SETTING_NAMES, ManagerSettings, check_setting
from .spec import ModelSpec, check_model_id, expand_path, looks_like_path
from .tasks import Task, inference_values, parse_tasks

__all__ = [
    "CONFIG_ENV",
    "ConfigFile",
    "default_config_path",
    "find_config_path",
    "load_config",
    "save_config",
]

log = logging.getLogger(__name__)

CONFIG_ENV = "JUPYTER_LLM_MANAGER_CONFIG"
Layout = Literal["standard", "legacy-mapping", "legacy-list", "legacy-tasks", "empty"]

_TOP_KEYS = ("defaults", "models", "aliases", "tasks", "inference")
_LEGACY_MAPPING_KEYS = ("model_name", "type", "device", "config")
_LEGACY_LIST_KEYS = (
    "model_id", "source_type", "source_path", "revision", "model_format", "quantization_bits",
    "device_preference", "required_gpu_memory_mb", "required_ram_mb", "custom_loader_params",
    "tokenizer_path", "trust_remote_code",
)
_LEGACY_TYPES = {
    "transformers": "transformers", "huggingface": "transformers", "hf": "transformers",
    "causal_lm": "transformers", "causallm": "transformers", "local": "transformers",
    "pytorch": "transformers", "openai": "openai", "vllm": "openai", "tgi": "openai", "ollama": "openai",
}
_LIFTED_LOADER_KEYS = {"torch_dtype": "dtype", "dtype": "dtype", "trust_remote_code": "trust_remote_code",
                       "revision": "revision"}
_MODEL_FORMATS = {None, "safetensors", "pytorch", "bin", "transformers", "huggingface", "hf"}
_LOCK_TIMEOUT_S = 10.0


def _settings(data: Any, path: str) -> ManagerSettings:
    if not isinstance(data, Mapping):
        raise ConfigurationError("defaults must be a mapping of setting to value", path=path, key="defaults")
    values = {}
    for key, value in data.items():
        if key not in SETTING_NAMES:
            raise _unknown_key(key, SETTING_NAMES, path=path, where="defaults")
        try:
            values[key] = check_setting(key, value)
        except ValueError as error:
            raise ConfigurationError(f"defaults.{error}", path=path, key=key) from None
    return ManagerSettings(**values)


@dataclass(frozen=True)
class ConfigFile:
    """What one configuration file holds, validated."""

    path: Path | None
    settings: ManagerSettings = field(default_factory=ManagerSettings)
    settings_given: frozenset[str] = frozenset()
    models: dict[str, ModelSpec] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    layout: Layout = "empty"
    tasks: dict[str, Task] = field(default_factory=dict)
    inference: dict[str, Any] = field(default_factory=dict)  # seed 003's block, saved back as read


def default_config_path() -> Path:
    """``~/.jupyter/llm_manager.yaml`` (or under ``$JUPYTER_CONFIG_DIR``)."""
    folder = os.environ.get("JUPYTER_CONFIG_DIR") or "~/.jupyter"
    return Path(os.path.expanduser(folder)) / "llm_manager.yaml"


def find_config_path(explicit: str | os.PathLike | None = None) -> Path | None:
    """The file to read: explicit path, then the environment variable, then the default.

    An explicit or environment path is returned even if missing (loading it
    then says so); the default path only when it exists.
    """
    if explicit is not None:
        return Path(expand_path(os.fspath(explicit)))
    if os.environ.get(CONFIG_ENV):
        return Path(expand_path(os.environ[CONFIG_ENV]))
    default = default_config_path()
    return default if default.exists() else None


def load_config(path: str | os.PathLike) -> ConfigFile:
    """Read and validate a configuration file in any of the three layouts.

    A file that does not exist yet is an empty registry: the first save creates it (and its folders).
    """
    path = Path(path)
    if not path.exists():
        return ConfigFile(path=path)
    data = _read_yaml(path)
    return _parse(data, path)


def _read_yaml(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_FILE_BYTES:  # refused before it is read
            raise ConfigurationError(f"the file is larger than {MAX_FILE_BYTES // (1024 * 1024)} MB; a configuration "
                                     "file is a few KB", path=str(path))
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"cannot read the file: {error}", path=str(path)) from None
    try:
        return load_yaml(text)
    except YamlProblem as problem:
        raise ConfigurationError(problem.message, path=str(path), line=problem.line) from None


def _parse(data: Any, path: Path) -> ConfigFile:
    where = str(path)
    if data is None:
        return ConfigFile(path=path)
    if not isinstance(data, Mapping):
        raise ConfigurationError("the file must hold a mapping with defaults, models and aliases",
                                 path=where)
    if _is_legacy_mapping(data):
        models = {_model_id(model_id, where): _from_legacy_mapping(model_id, entry, where)
              for model_id, entry in data.items()}
        return ConfigFile(path=path, models=models, layout="legacy-mapping")
    for key in data:
        if key not in _TOP_KEYS:
            raise _unknown_key(key, _TOP_KEYS, path=where, where="the top level")
    raw_defaults = data.get("defaults") or {}
    inference = data.get("inference") or {}
    from_inference, warm_up = inference_values(inference, where)
    settings = _settings({**from_inference, **raw_defaults}, where)
    raw_models = data.get("models") or {}
    if isinstance(raw_models, list):
        models = _from_legacy_list(raw_models, where)
        layout: Layout = "legacy-list"
    elif isinstance(raw_models, Mapping):
        models = {_model_id(model_id, where): _spec(_model_id(model_id, where), entry or {}, where)
                  for model_id, entry in raw_models.items()}
        layout = "standard"
    else:
        raise ConfigurationError("models must be a mapping of id to options", path=where, key="models")
    aliases = _parse_aliases(data.get("aliases") or {}, models, where)
    tasks: dict[str, Task] = {}
    if data.get("tasks"):
        tasks, options, task_aliases = parse_tasks(data["tasks"], where, warm_up=warm_up,
                                                   backend_names=_backend_names)
        for name in [*options, *task_aliases]:
            if name in models or name in aliases:
                raise ConfigurationError(f"{name!r} is both a task (or a task's option) and a model or alias",
                                         path=where, key=name)
        models.update(options)
        aliases.update(task_aliases)
        if "inference" in data and not raw_defaults and layout == "standard":
            layout = "legacy-tasks"  # seed 003's file: saved in ours (defaults instead of inference), with a .bak
    return ConfigFile(path=path, settings=settings, settings_given=frozenset(raw_defaults) | frozenset(from_inference),
                      models=models, aliases=aliases, layout=layout, tasks=tasks, inference=dict(inference))


def _backend_names() -> set[str]:
    from ..backends import available_backends

    return set(available_backends())


def _model_id(value: Any, where: str) -> str:
    """A model id as written in the file: text only (YAML reads null, true or 1 as other types)."""
    if not isinstance(value, str):
        raise ConfigurationError(f"the model id {brief(value)} is read as {type(value).__name__}, not text: quote it "
                                 f"(write '{value}' in quotes) or choose another id", path=where)
    return value


def _spec(model_id: str, entry: Any, where: str) -> ModelSpec:
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"expected a mapping of options, got {brief(entry)}", path=where, model_id=model_id)
    spec = ModelSpec.from_mapping(model_id, entry, path=where, check_paths=False)
    if spec.local_path and not spec.local_path.exists():
        log.warning("%s: model %r points to %s, which does not exist (yet); loading it will fail "
                    "until it does", where, model_id, spec.local_path)
    return spec


def _parse_aliases(raw: Any, models: Mapping[str, ModelSpec], where: str) -> dict[str, str]:
    if not isinstance(raw, Mapping):
        raise ConfigurationError("aliases must be a mapping of alias to model id", path=where, key="aliases")
    aliases = {}
    for name, target in raw.items():
        if not isinstance(target, str):
            raise ConfigurationError(f"alias {brief(name)} must name a model id, got {brief(target)}", path=where)
        name = check_model_id(_model_id(name, where), path=where)
        if name in models:
            raise ConfigurationError(f"{brief(name)} is both a model and an alias", path=where, key=brief(name))
        aliases[name] = target
    return aliases


def _unknown_key(key: Any, known: Iterable[str], *, path: str | None, where: str,
                 model_id: str | None = None) -> ConfigurationError:
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else f"; expected one of {', '.join(known)}"
    return ConfigurationError(f"unknown key {brief(key)} in {where}{hint}", path=path, model_id=model_id, key=brief(key))


# -- the two legacy layouts -------------------------------------------------

def _is_legacy_mapping(data: Mapping[str, Any]) -> bool:
    if any(key in data for key in _TOP_KEYS) or not data:
        return False
    return all(isinstance(entry, Mapping) and "model_name" in entry for entry in data.values())


def _lift_loader_params(params: Any, where: str, model_id: str) -> dict[str, Any]:
    """Split loader keyword arguments into spec fields and ``load_kwargs``."""
    if params is None:
        return {}
    if not isinstance(params, Mapping):
        raise ConfigurationError(f"expected a mapping of loader options, got {brief(params)}",
                                 path=where, model_id=model_id)
    values: dict[str, Any] = {}
    rest = {}
    for key, value in params.items():
        if key in _LIFTED_LOADER_KEYS:
            values[_LIFTED_LOADER_KEYS[key]] = value
        elif key in ("load_in_4bit", "load_in_8bit") and value:
            values["quantization"] = key[len("load_in_"):]
        else:
            rest[key] = value
    if rest:
        values["load_kwargs"] = rest
    return values


def _from_legacy_mapping(model_id: str, entry: Mapping[str, Any], where: str) -> ModelSpec:
    for key in entry:
        if key not in _LEGACY_MAPPING_KEYS:
            raise _unknown_key(key, _LEGACY_MAPPING_KEYS, path=where, where=f"model {model_id!r}")
    values: dict[str, Any] = {"source": entry["model_name"]}
    kind = str(entry.get("type") or "transformers").lower()
    values["backend"] = _LEGACY_TYPES.get(kind, kind)
    if entry.get("device") is not None:
        values["device"] = entry["device"]
    values.update(_lift_loader_params(entry.get("config"), where, model_id))
    return _spec(_model_id(model_id, where), values, where)


def _from_legacy_list(items: list[Any], where: str) -> dict[str, ModelSpec]:
    models = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or "model_id" not in item:
            raise ConfigurationError(f"models[{index}] must be a mapping with a model_id", path=where)
        model_id = _model_id(item["model_id"], where)
        for key in item:
            if key not in _LEGACY_LIST_KEYS:
                raise _unknown_key(key, _LEGACY_LIST_KEYS, path=where, where=f"model {model_id!r}",
                                   model_id=model_id)
        if model_id in models:
            raise ConfigurationError("this id appears twice in models", path=where, model_id=model_id)
        models[model_id] = _spec(model_id, _legacy_list_values(model_id, item, where), where)
    return models


def _legacy_list_values(model_id: str, item: Mapping[str, Any], where: str) -> dict[str, Any]:
    source = str(item.get("source_path") or "")
    if item.get("source_type", "huggingface") == "local" and not looks_like_path(source):
        source = "./" + source
    elif item.get("source_type", "huggingface") not in ("huggingface", "local"):
        raise ConfigurationError(f"source_type must be huggingface or local, got {brief(item['source_type'])}",
                                 path=where, model_id=model_id, key="source_type")
    values: dict[str, Any] = {"source": source}
    model_format = item.get("model_format")
    if model_format not in _MODEL_FORMATS:
        raise ConfigurationError(f"model_format {brief(model_format)} is not supported; use safetensors or pytorch",
                                 path=where, model_id=model_id, key="model_format")
    values.update(_lift_loader_params(item.get("custom_loader_params"), where, model_id))
    if model_format in ("safetensors", "pytorch", "bin"):
        values.setdefault("load_kwargs", {})["use_safetensors"] = model_format == "safetensors"
    bits = item.get("quantization_bits")
    if bits in (4, 8):
        values["quantization"] = f"{bits}bit"
    elif bits not in (None, 16, 32):
        raise ConfigurationError(f"quantization_bits must be 4, 8, 16, 32 or null, got {brief(bits)}",
                                 path=where, model_id=model_id, key="quantization_bits")
    device = item.get("device_preference") or "auto"
    values["device"] = device
    gpu_mb, ram_mb = item.get("required_gpu_memory_mb"), item.get("required_ram_mb")
    needed_mb = ram_mb if device == "cpu" or gpu_mb is None else gpu_mb
    if needed_mb is not None:
        values["required_memory"] = int(float(needed_mb) * 1024 * 1024)
    for legacy, ours in (("revision", "revision"), ("tokenizer_path", "tokenizer"),
                         ("trust_remote_code", "trust_remote_code")):
        if item.get(legacy) is not None:
            values[ours] = item[legacy]
    return values


# -- saving -------------------------------------------------------------------

def save_config(
    path: str | os.PathLike,
    models: Mapping[str, ModelSpec],
    aliases: Mapping[str, str],
    *,
    removed: Iterable[str] = (),
    defaults: Mapping[str, Any] | None = None,
    tasks: Mapping[str, Mapping[str, Any]] | None = None,
    inference: Mapping[str, Any] | None = None,
) -> Path:
    """Merge ``models`` and ``aliases`` into the file and write it atomically.

    Under the lock, the file is read again so registrations saved by another
    kernel meanwhile are kept (no lost update). Ids in ``removed`` are dropped.
    ``defaults`` (every setting's saved form) replaces the file's block; ``tasks`` (name → its
    saved form) replace those tasks, ``inference`` seed 003's block. A legacy file is converted to
    our layout once, with a ``.bak`` copy of the original.
    """
    path = Path(expand_path(os.fspath(path)))
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=_LOCK_TIMEOUT_S):
            document = _merged_document(path, models, aliases, set(removed), defaults)
            document["tasks"] = {**document.get("tasks", {}), **(tasks or {})}
            if inference is not None:
                document["inference"] = dict(inference)
            document = {key: value for key, value in document.items() if value}
            _atomic_write(path, dump_yaml(document))
    except Timeout:
        raise ConfigurationError(f"another process has held the lock {path}.lock for "
                                 f"{_LOCK_TIMEOUT_S:.0f} s; try again", path=str(path)) from None
    except PermissionError as error:
        raise ConfigurationError(f"cannot write the file ({error.strerror}); choose a writable "
                                 "config_path", path=str(path)) from None
    except OSError as error:
        raise ConfigurationError(f"cannot write the file: {error}", path=str(path)) from None
    return path


def _merged_document(path: Path, models: Mapping[str, ModelSpec], aliases: Mapping[str, str],
                     removed: set[str], defaults: Mapping[str, Any] | None) -> dict[str, Any]:
    document: dict[str, Any] = {"defaults": dict(defaults or {}), "models": {}, "aliases": {}, "tasks": {},
                                "inference": {}}
    if path.exists():
        current = _read_yaml(path)
        registry = _parse(current, path)
        if registry.layout.startswith("legacy"):
            backup = path.with_name(path.name + ".bak")
            if not backup.exists():
                shutil.copy2(path, backup)
            log.warning("%s was in a legacy layout; it is now saved in ours, with the original "
                        "kept as %s", path, backup)
            document["models"] = {i: s.to_mapping() for i, s in registry.models.items() if not s.task}
            document["aliases"] = {a: t for a, t in registry.aliases.items() if a not in registry.tasks}
            document["tasks"] = {name: task.to_mapping() for name, task in registry.tasks.items()}
            document["inference"] = dict(registry.inference)
        elif current:
            document["models"] = dict(current.get("models") or {})
            document["aliases"] = dict(current.get("aliases") or {})
            document["tasks"] = dict(current.get("tasks") or {})
            document["inference"] = dict(current.get("inference") or {})
            if current.get("defaults") and defaults is None:
                document["defaults"] = dict(current["defaults"])
    for model_id in removed:
        document["models"].pop(model_id, None)
        document["aliases"].pop(model_id, None)
    document["aliases"] = {a: t for a, t in document["aliases"].items() if t not in removed}
    for model_id, spec in models.items():
        document["models"][model_id] = spec.to_mapping(warn=True)
        document["aliases"].pop(model_id, None)
    document["aliases"].update(aliases)
    return {key: value for key, value in document.items() if value}


def _atomic_write(path: Path, text: str) -> None:
    """Write to a temporary file in the same folder, then rename over the target."""
    descriptor, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if path.exists():
            os.chmod(temporary, stat.S_IMODE(path.stat().st_mode))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
