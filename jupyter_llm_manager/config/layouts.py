"""The layouts a configuration file may have, read into one validated :class:`ConfigFile`.

- **ours** (see the README): ``defaults``, ``models`` (id to options), ``aliases``, and maybe ``tasks``;
- **tasks with options**: ``tasks`` whose options each name a model, with an ``inference`` block
  instead of ``defaults`` (the files of task-based model managers);
- **a mapping of models**: ids mapped to ``model_name``, ``type``, ``device`` and ``config``
  (the files of simple LLM managers);
- **a list of models**: ``models`` as a list of entries with ``model_id``, ``source_path`` and
  ``required_gpu_memory_mb`` (the model-list files of model-manager guides).

Every layout reads into the same specs; saving always writes ours.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigurationError
from ..support.units import brief
from .settings import SETTING_NAMES, ManagerSettings, check_setting
from .spec import ModelSpec, check_model_id, looks_like_path
from .tasks import Task, inference_values, parse_tasks

__all__ = ["ConfigFile", "Layout", "parse_document"]

log = logging.getLogger(__name__)

#: What a file was written as: ours, tasks with options, a mapping of models, a list of models, nothing.
Layout = Literal["ours", "tasks", "model-mapping", "model-list", "empty"]

_TOP_KEYS = ("defaults", "models", "aliases", "tasks", "inference")
_MAPPING_KEYS = ("model_name", "type", "device", "config")
_LIST_KEYS = (
    "model_id", "source_type", "source_path", "revision", "model_format", "quantization_bits",
    "device_preference", "required_gpu_memory_mb", "required_ram_mb", "custom_loader_params",
    "tokenizer_path", "trust_remote_code",
)
_MAPPING_TYPES = {
    "transformers": "transformers", "huggingface": "transformers", "hf": "transformers",
    "causal_lm": "transformers", "causallm": "transformers", "local": "transformers",
    "pytorch": "transformers", "openai": "openai", "vllm": "openai", "tgi": "openai", "ollama": "openai",
}
_LIFTED_LOADER_KEYS = {"torch_dtype": "dtype", "dtype": "dtype", "trust_remote_code": "trust_remote_code",
                       "revision": "revision"}
_MODEL_FORMATS = {None, "safetensors", "pytorch", "bin", "transformers", "huggingface", "hf"}

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
    inference: dict[str, Any] = field(default_factory=dict)  # a task layout's block, saved back as read



def parse_document(data: Any, path: Path) -> ConfigFile:
    """A parsed YAML document (``data``) of the file at ``path``, in whichever layout it is written."""
    where = str(path)
    if data is None:
        return ConfigFile(path=path)
    if not isinstance(data, Mapping):
        raise ConfigurationError("the file must hold a mapping with defaults, models and aliases",
                                 path=where)
    if _is_model_mapping(data):
        models = {_model_id(model_id, where): _from_model_mapping(model_id, entry, where)
              for model_id, entry in data.items()}
        return ConfigFile(path=path, models=models, layout="model-mapping")
    for key in data:
        if key not in _TOP_KEYS:
            raise _unknown_key(key, _TOP_KEYS, path=where, where="the top level")
    raw_defaults = data.get("defaults") or {}
    inference = data.get("inference") or {}
    from_inference, warm_up = inference_values(inference, where)
    settings = _settings({**from_inference, **raw_defaults}, where)
    raw_models = data.get("models") or {}
    if isinstance(raw_models, list):
        models = _from_model_list(raw_models, where)
        layout: Layout = "model-list"
    elif isinstance(raw_models, Mapping):
        models = {_model_id(model_id, where): _spec(_model_id(model_id, where), entry or {}, where)
                  for model_id, entry in raw_models.items()}
        layout = "ours"
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
        if "inference" in data and not raw_defaults and layout == "ours":
            layout = "tasks"  # saved in ours (defaults instead of inference), with a .bak
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


# -- a mapping of models, a list of models ------------------------------------------

def _is_model_mapping(data: Mapping[str, Any]) -> bool:
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


def _from_model_mapping(model_id: str, entry: Mapping[str, Any], where: str) -> ModelSpec:
    for key in entry:
        if key not in _MAPPING_KEYS:
            raise _unknown_key(key, _MAPPING_KEYS, path=where, where=f"model {model_id!r}")
    values: dict[str, Any] = {"source": entry["model_name"]}
    kind = str(entry.get("type") or "transformers").lower()
    values["backend"] = _MAPPING_TYPES.get(kind, kind)
    if entry.get("device") is not None:
        values["device"] = entry["device"]
    values.update(_lift_loader_params(entry.get("config"), where, model_id))
    return _spec(_model_id(model_id, where), values, where)


def _from_model_list(items: list[Any], where: str) -> dict[str, ModelSpec]:
    models = {}
    for index, item in enumerate(items):
        if not isinstance(item, Mapping) or "model_id" not in item:
            raise ConfigurationError(f"models[{index}] must be a mapping with a model_id", path=where)
        model_id = _model_id(item["model_id"], where)
        for key in item:
            if key not in _LIST_KEYS:
                raise _unknown_key(key, _LIST_KEYS, path=where, where=f"model {model_id!r}",
                                   model_id=model_id)
        if model_id in models:
            raise ConfigurationError("this id appears twice in models", path=where, model_id=model_id)
        models[model_id] = _spec(model_id, _model_list_values(model_id, item, where), where)
    return models


def _model_list_values(model_id: str, item: Mapping[str, Any], where: str) -> dict[str, Any]:
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
    for theirs, ours in (("revision", "revision"), ("tokenizer_path", "tokenizer"),
                         ("trust_remote_code", "trust_remote_code")):
        if item.get(theirs) is not None:
            values[ours] = item[theirs]
    return values


