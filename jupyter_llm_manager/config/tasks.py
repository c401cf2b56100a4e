"""Tasks with options: each task has options to choose from (models, local or remote) and one selected.

```yaml
tasks:
  summarize:
    selected: balanced
    options:
      fast:     {model_id: Qwen/Qwen2.5-0.5B-Instruct, framework: pytorch, vram_gb: 1.5, speed: fast}
      served:   {model_id: meta-llama/Llama-3.1-8B-Instruct, framework: vllm, api_endpoint: http://127.0.0.1:8000/v1}
inference: {max_memory_per_model: auto, offload_threshold: 0.85, warmup_on_startup: false}
```

Each option becomes a model id ``TASK/OPTION`` and each task an alias of its
selected option. ``framework`` picks the backend (``pytorch`` → transformers;
``vllm``/``sglang`` with an ``api_endpoint`` → the OpenAI-compatible backend;
``external_api`` → the backend named by ``provider``); ``vram_gb`` (GiB) is the
declared size (``required_memory``). Keys that only describe an option
(``speed``, ``description``, ``fps``...) are kept and saved as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..errors import ConfigurationError
from ..support.units import brief
from .spec import ModelSpec, check_model_id

__all__ = ["FRAMEWORKS", "INFERENCE_KEYS", "Task", "inference_values", "option_id", "parse_tasks"]

FRAMEWORKS = ("pytorch", "vllm", "sglang", "external_api")
INFERENCE_KEYS = ("max_memory_per_model", "offload_threshold", "warmup_on_startup", "default_batch_size",
                  "max_batch_size")
_TASK_KEYS = ("selected", "options", "preload")
_OPTION_KEYS = ("model_id", "framework", "vram_gb", "quantization", "provider", "api_endpoint", "requires_api_key",
                "api_key")
#: Our own spec keys an option may also use (device, dtype, keep_alive...): passed through as they are.
_PASSED = ("device", "dtype", "revision", "trust_remote_code", "token", "tokenizer", "max_context", "gguf_file",
           "mode", "pinned", "priority", "protected", "kind", "keep_alive", "preload", "generation", "load_kwargs",
           "timeout", "max_retries", "headers", "options", "loader", "unloader", "required_memory", "backend",
           "source", "model", "base_url")
_GIB = 2**30


@dataclass(frozen=True)
class Task:
    """One task: its options as written in the file, the option selected, and whether to warm it up."""

    name: str
    selected: str
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    preload: bool = False

    def to_mapping(self, selected: str | None = None) -> dict[str, Any]:
        """The task as it is saved: every option as it was written, the current selection."""
        entry: dict[str, Any] = {"selected": selected or self.selected}
        if self.preload:
            entry["preload"] = True
        entry["options"] = {name: dict(option) for name, option in self.options.items()}
        return entry


def option_id(task: str, option: str) -> str:
    """The model id of a task's option: ``TASK/OPTION``."""
    return f"{task}/{option}"


def parse_tasks(raw: Any, where: str, *, warm_up: bool, backend_names: Callable[[], set[str]]
                ) -> tuple[dict[str, Task], dict[str, ModelSpec], dict[str, str]]:
    """The tasks of a file: the tasks, a spec per option (``TASK/OPTION``) and an alias per task.

    ``warm_up`` (``inference.warmup_on_startup``) preloads every task's
    selected option; ``backend_names`` lists the installed backends (for an
    ``external_api`` provider).
    """
    if not isinstance(raw, Mapping):
        raise ConfigurationError("tasks must be a mapping of task name to {selected, options}", path=where,
                                 key="tasks")
    tasks: dict[str, Task] = {}
    specs: dict[str, ModelSpec] = {}
    for name, entry in raw.items():
        task = _task(name, entry, where, warm_up)
        tasks[task.name] = task
        for option, values in task.options.items():
            preload = task.preload and option == task.selected
            spec = option_spec(task.name, option, values, where=where, preload=preload, backend_names=backend_names)
            specs[spec.id] = spec
    return tasks, specs, {name: option_id(name, task.selected) for name, task in tasks.items()}


def _task(name: Any, entry: Any, where: str, warm_up: bool) -> Task:
    if not isinstance(name, str) or "/" in name:
        raise ConfigurationError(f"the task name {brief(name)} must be text without '/'", path=where, key="tasks")
    check_model_id(name, path=where)
    if not isinstance(entry, Mapping):
        raise ConfigurationError(f"task {name!r} must be a mapping with selected and options", path=where, key=name)
    for key in entry:
        if key not in _TASK_KEYS:
            raise ConfigurationError(f"unknown key {brief(key)} in task {name!r}; expected one of "
                                     f"{', '.join(_TASK_KEYS)}", path=where, key=brief(key))
    options = entry.get("options")
    if not isinstance(options, Mapping) or not options:
        raise ConfigurationError(f"task {name!r} needs options: a mapping of option name to its model", path=where,
                                 key="options")
    for option, values in options.items():
        if not isinstance(option, str) or not re.fullmatch(r"[\w.:@+-]+", option):
            raise ConfigurationError(f"option {brief(option)} of task {name!r} must be a name of letters, digits "
                                     "and _ . : @ + -", path=where, key=name)
        if not isinstance(values, Mapping):
            raise ConfigurationError(f"option {option!r} of task {name!r} must be a mapping", path=where, key=option)
    selected = entry.get("selected", next(iter(options)))
    if selected not in options:
        raise ConfigurationError(f"task {name!r} selects {brief(selected)}, which is not one of its options: "
                                 f"{', '.join(map(str, options))}", path=where, key="selected")
    preload = entry.get("preload", warm_up)
    if not isinstance(preload, bool):
        raise ConfigurationError(f"preload of task {name!r} must be true or false", path=where, key="preload")
    return Task(name, selected, {str(k): dict(v) for k, v in options.items()}, preload)


def option_spec(task: str, option: str, values: Mapping[str, Any], *, where: str | None, preload: bool,
                backend_names: Callable[[], set[str]]) -> ModelSpec:
    """The spec of one option, from the task layout's keys; the keys that only describe it are kept in ``about``."""
    model_id = option_id(task, option)
    context: dict[str, Any] = {"path": where, "model_id": model_id}
    spec_values: dict[str, Any] = {key: values[key] for key in _PASSED if key in values}
    about = {key: _descriptive(key, value, context) for key, value in values.items()
             if key not in _OPTION_KEYS and key not in _PASSED}
    framework = str(values.get("framework", "pytorch")).lower()
    name = values.get("model_id")
    if not isinstance(name, str) or not name.strip():
        raise ConfigurationError("an option needs model_id: a Hub id, a local folder, or the served model's name",
                                 key="model_id", **context)
    if framework == "pytorch":
        spec_values.setdefault("source", name)
        quantization = values.get("quantization")
        if quantization in ("4bit", "8bit"):
            spec_values["quantization"] = quantization
        elif quantization is not None:  # awq, gptq...: the checkpoint carries its own quantization
            about["quantization"] = quantization
    elif framework in ("vllm", "sglang"):
        endpoint = values.get("api_endpoint")
        if not endpoint:
            raise ConfigurationError(
                f"this option runs on {framework}, a server: start it (e.g. `{framework} serve {name}` or "
                f"`python -m sglang.launch_server --model-path {name}`) and give its URL as api_endpoint: "
                "http://127.0.0.1:8000/v1", key="api_endpoint", **context)
        spec_values.update(backend="openai", base_url=endpoint, model=name)
    elif framework == "external_api":
        spec_values.update(_external(values, name, context, backend_names))
    else:
        raise ConfigurationError(f"framework {brief(framework)} is not one of {', '.join(FRAMEWORKS)}",
                                 key="framework", **context)
    if values.get("requires_api_key") or values.get("api_key") is not None:
        spec_values["api_key"] = _key_reference(values, framework, context)
    vram = values.get("vram_gb")
    if vram is not None:
        if isinstance(vram, bool) or not isinstance(vram, (int, float)) or not 0 <= vram < 1e6:
            raise ConfigurationError(f"vram_gb must be a number of GiB, got {brief(vram)}", key="vram_gb", **context)
        if vram > 0 and spec_values.get("backend") not in ("openai", "unavailable"):
            spec_values.setdefault("required_memory", int(vram * _GIB))
    spec_values["preload"] = bool(spec_values.get("preload")) or preload
    spec_values["task"] = task
    spec_values["about"] = about
    return ModelSpec.from_mapping(model_id, spec_values, path=where, check_paths=False)


def _external(values: Mapping[str, Any], name: str, context: dict[str, Any],
              backend_names: Callable[[], set[str]]) -> dict[str, Any]:
    provider = str(values.get("provider") or "").lower()
    endpoint = values.get("api_endpoint")
    if provider == "openai":
        return {"backend": "openai", "base_url": endpoint or "https://api.openai.com/v1", "model": name}
    if not provider:
        raise ConfigurationError("an external_api option needs provider: openai (or any OpenAI-compatible "
                                 "service), or a provider with a backend installed", key="provider", **context)
    if provider not in backend_names():  # the file still loads: this option says why it cannot, when used
        return {"backend": "unavailable", "model": name, "options": {"reason": (
            f"provider {provider!r} has no backend here: install a package that registers a backend named "
            f"{provider!r} (entry point group jupyter_llm_manager.backends), or use an OpenAI-compatible endpoint "
            "with provider: openai and its api_endpoint")}}
    found: dict[str, Any] = {"backend": provider, "model": name}
    if endpoint:
        found["base_url"] = endpoint
    return found


def _key_reference(values: Mapping[str, Any], framework: str, context: dict[str, Any]) -> str:
    """``${VAR}``: the option's own reference, else ``${PROVIDER_API_KEY}``. A key itself is refused."""
    given = values.get("api_key")
    if given is None:
        provider = str(values.get("provider") or framework)
        return "${" + re.sub(r"\W", "_", provider).upper() + "_API_KEY}"
    if not isinstance(given, str) or not re.fullmatch(r"\$\{[A-Za-z_][A-Za-z0-9_]*\}", given.strip()):
        raise ConfigurationError("api_key in a task option must be a reference to an environment variable, like "
                                 "${ANTHROPIC_API_KEY}: a key is never read from the file (its value is not shown)",
                                 key="api_key", **context)
    return given.strip()


def _descriptive(key: Any, value: Any, context: dict[str, Any]) -> Any:
    """A key that only describes an option: text, a number, a flag, or a short list of those."""
    if not isinstance(key, str):
        raise ConfigurationError(f"option keys are text, got {brief(key)}", **context)
    simple = (str, int, float, bool, type(None))
    if isinstance(value, simple) or (isinstance(value, list) and len(value) <= 64
                                     and all(isinstance(v, simple) for v in value)):
        return value
    raise ConfigurationError(f"{key!r} describes the option and must be text, a number, true/false or a short "
                             f"list, got {brief(value)}", key=key, **context)


def inference_values(raw: Any, where: str) -> tuple[dict[str, Any], bool]:
    """A task layout's ``inference:`` block: the settings it maps to, and whether to warm up on startup.

    ``offload_threshold`` is the memory fraction; ``max_memory_per_model``
    (``auto``: no cap) caps one model's placement. The batch sizes are kept
    (the file is saved with them) but the manager does not batch.
    """
    if not isinstance(raw, Mapping):
        raise ConfigurationError("inference must be a mapping", path=where, key="inference")
    for key in raw:
        if key not in INFERENCE_KEYS:
            raise ConfigurationError(f"unknown key {brief(key)} in inference; expected one of "
                                     f"{', '.join(INFERENCE_KEYS)}", path=where, key=brief(key))
    settings: dict[str, Any] = {}
    if raw.get("offload_threshold") is not None:
        settings["memory_fraction"] = raw["offload_threshold"]
    cap = raw.get("max_memory_per_model")
    if cap is not None and str(cap).lower() != "auto":
        settings["max_memory_per_model"] = cap
    warm = raw.get("warmup_on_startup", False)
    if not isinstance(warm, bool):
        raise ConfigurationError("inference.warmup_on_startup must be true or false", path=where,
                                 key="warmup_on_startup")
    return settings, warm
