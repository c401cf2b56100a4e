"""A validated description of one model: :class:`ModelSpec`, and its secrets.

A spec says what to load and how; it loads nothing. Every value is checked
and normalized here (``fp16`` → ``float16``, ``"30m"`` → 1800.0), so the
rest of the package trusts specs. :attr:`ModelSpec.instance_key` is the one
place that decides whether two ids share one loaded instance.
"""

from __future__ import annotations

import difflib
import functools
import hashlib
import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigurationError
from ..support.units import brief
from .secrets import (
    Secret,
    canonical,
    shown_url,
    url_credentials,
)
from .spec_checks import check_backend_fields, spec_mapping
from .spec_fields import (
    CONVERTERS,
    DTYPES,
    INHERITED,
    KIND_PRIORITY,
    NULLABLE,
    PROTECTED_KINDS,
    QUANTIZATIONS,
    adapter_is_local,
    check_model_id,
    expand_path,
    looks_like_path,
)

__all__ = [
    "DTYPES",
    "KIND_PRIORITY",
    "QUANTIZATIONS",
    "ModelSpec",
    "Secret",
    "adapter_is_local",
    "check_model_id",
    "expand_path",
    "looks_like_path",
]

log = logging.getLogger(__name__)

@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """What to load for one model id, and how. Loads nothing.

    Fields not used by a backend are ignored by it: ``source`` and the loading
    options are for ``transformers``; ``base_url``, ``model``, ``api_key``,
    ``timeout``, ``max_retries`` and ``headers`` for ``openai``; ``options``
    carries settings for third-party backends.
    """

    id: str
    source: str | None = None
    backend: str = "transformers"
    revision: str | None = None
    device: str | tuple[str, ...] = "auto"
    dtype: str = "auto"
    quantization: str | None = None
    trust_remote_code: bool = False
    token: Secret | None = None
    tokenizer: str | None = None
    max_context: int | Literal["auto"] | None = None
    max_context_auto_limit: int | None = None  # max_context: auto grows at most to this (None: the setting)
    gguf_file: str | None = None
    mode: Literal["chat", "embed"] = "chat"
    required_memory: int | None = None
    pinned: bool = False
    priority: int | None = None
    protected: bool | None = None
    kind: str = "llm"
    keep_alive: float | None = None
    preload: bool = False
    generation: dict[str, Any] = field(default_factory=dict)
    load_kwargs: dict[str, Any] = field(default_factory=dict)
    base_url: str | None = None
    model: str | None = None
    api_key: Secret | None = None
    timeout: float | None = None
    max_retries: int | None = None
    headers: dict[str, Secret] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    loader: str | None = None  # package.module:function returning the model (backend "loader")
    unloader: str | None = None  # package.module:function called with the model before it is dropped
    task: str | None = None  # the task this is an option of (its id is TASK/OPTION); saved under tasks:
    about: dict[str, Any] = field(default_factory=dict)  # keys that only describe it (speed, description)
    builtin: bool = False
    base: str | None = None  # the model id a LoRA adapter runs on (its loading fields are the base's)
    adapter: str | None = None  # a PEFT adapter folder or Hub id, or a GGUF LoRA file (llama_cpp)

    @classmethod
    def from_mapping(
        cls, model_id: str, data: Mapping[str, Any], *, path: str | os.PathLike | None = None,
        check_paths: bool = True,
    ) -> ModelSpec:
        """Validate a mapping (a YAML entry or ``register`` keywords) into a spec.

        Raises :class:`ConfigurationError` naming the file, the model, the key
        and, for an unknown key, the closest known one. ``check_paths`` also
        requires a local source folder to exist now.
        """
        where: dict[str, Any] = {"path": str(path) if path else None, "model_id": model_id}
        check_model_id(model_id, path=where["path"])
        if not isinstance(data, Mapping):
            raise ConfigurationError(f"expected a mapping of options, got {brief(data)}", **where)
        values: dict[str, Any] = {}
        for key, value in data.items():
            if key not in CONVERTERS:
                close = difflib.get_close_matches(str(key), list(CONVERTERS), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(CONVERTERS)}"
                raise ConfigurationError(f"unknown key {brief(key)}{hint}", key=brief(key), **where)
            if value is None and key not in NULLABLE:
                continue
            try:
                values[key] = CONVERTERS[key](value)
            except ValueError as error:
                raise ConfigurationError(f"{key}: {error}", key=key, **where) from None
        if values.get("loader") and "backend" not in data:
            values["backend"] = "loader"
        spec = cls(id=model_id, **values)
        check_backend_fields(spec, where, check_paths)
        return spec

    @property
    def location(self) -> str:
        """Where the model comes from, as it may be shown: its source, its loader, or its server's URL."""
        return self.source or self.loader or shown_url(self.base_url or "")

    @property
    def effective_priority(self) -> int:
        """``priority``, else the default of its ``kind`` (llm 0, tts 1, asr 2; others 0)."""
        return self.priority if self.priority is not None else KIND_PRIORITY.get(self.kind, 0)

    @property
    def effective_protected(self) -> bool:
        """``protected``, else whether its ``kind`` is protected (``asr``)."""
        return self.protected if self.protected is not None else self.kind in PROTECTED_KINDS

    @functools.cached_property
    def local_path(self) -> Path | None:
        """The resolved local folder, when the source is one (resolved once: a later ``cd`` does not move it)."""
        if self.source and looks_like_path(self.source):
            return Path(expand_path(self.source)).resolve()
        return None

    @functools.cached_property
    def adapter_location(self) -> str | None:
        """The adapter as one string: a resolved local path, or a Hub id (``org/name``) as written."""
        if self.adapter is None:
            return None
        if adapter_is_local(self.adapter):
            return str(Path(expand_path(self.adapter)).resolve())
        return self.adapter

    def on_base(self, base: ModelSpec) -> ModelSpec:
        """This adapter's spec with its base's loading fields (see :data:`INHERITED`), validated.

        A loading field the adapter sets to another value than its base is a
        :class:`ConfigurationError`: an adapter runs on its base as the base is loaded.
        """
        where: dict[str, Any] = {"model_id": self.id}
        if base.adapter is not None:
            raise ConfigurationError(f"{base.id!r} is itself an adapter (on {base.base!r}): an adapter runs on a "
                                     f"model, not on another adapter; give base={base.base!r}", key="base", **where)
        defaults = {f.name: f.default_factory() if callable(f.default_factory) else f.default for f in fields(self)}
        changes: dict[str, Any] = {}
        for name in INHERITED:
            mine, theirs = getattr(self, name), getattr(base, name)
            if mine != defaults[name] and mine != theirs:
                raise ConfigurationError(f"{name}: an adapter loads on its base {base.id!r} and takes its {name} "
                                         f"from there; remove {name} here (or change it on the base)",
                                         key=name, **where)
            changes[name] = theirs
        spec = replace(self, base=base.id, **changes)
        check_backend_fields(spec, {"path": None, **where}, check_paths=False)
        return spec

    def detached(self) -> ModelSpec:
        """An adapter's spec as written, without what it took from its base (to take it again from a new base)."""
        defaults: dict[str, Any] = {f.name: f.default_factory() if callable(f.default_factory) else f.default
                                    for f in fields(self)}
        return replace(self, **{name: defaults[name] for name in INHERITED})

    @functools.cached_property
    def instance_key(self) -> str:
        """The one key that decides sharing: equal keys load the same weights the same way."""
        if self.base_url is not None:  # another key or header is another client: permissions, quota, billing
            key = f"{self.backend}:{shown_url(self.base_url).rstrip('/')}#{self.model or self.id}"
            in_url = url_credentials(self.base_url)
            credentials = [f"url={in_url.fingerprint}"] if in_url is not None else []
            credentials += [f"key={self.api_key.fingerprint}"] if self.api_key else []
            credentials += [f"{name}={value.fingerprint}" for name, value in sorted(self.headers.items())]
            key += f"|{','.join(credentials)}" if credentials else ""
            # the client is built with them: an id with its own timeout or retries gets its own client
            settings = [f"timeout={self.timeout:g}"] if self.timeout is not None else []
            settings += [f"retries={self.max_retries}"] if self.max_retries is not None else []
            return key + (f"|{','.join(settings)}" if settings else "")
        device = ",".join(self.device) if isinstance(self.device, tuple) else self.device
        key = f"{self._weights_key}|{device}"
        if self.backend == "llama_cpp":  # its context is allocated at load: another size is another instance
            key += f"|ctx={self.max_context or 'default'}"
            key += f"<={self.max_context_auto_limit}" if self.max_context == "auto" and self.max_context_auto_limit else ""
        return key + self._details_key

    @functools.cached_property
    def share_key(self) -> str | None:
        """The key under which another process's loaded copy answers for this spec: the instance key without the
        device and the llama.cpp context (allocated at load: a borrower checks the holder's is large enough; other
        backends' ``max_context`` stays in, since it decides where prompts and answers are cut); ``None`` for
        models that are not lent (remote ones are served already; a loader's object has no text interface)."""
        if self.base_url is not None or self.loader:
            return None
        if self.backend != "llama_cpp" and self.max_context is not None:  # where answers are cut: the same only
            return f"{self._weights_key}|ctx={self.max_context}{self._details_key}"
        return self._weights_key + self._details_key

    @property
    def _weights_key(self) -> str:
        location = str(self.local_path) if self.local_path else self.source
        if self.loader:  # a loader's model is its callable's, with its declared size and unloader
            location = f"{self.loader}|{self.unloader}|{self.required_memory}"
        if self.gguf_file:
            location = f"{location}/{self.gguf_file}"
        key = f"{self.backend}:{location}@{self.revision or 'main'}|{self.dtype}|{self.quantization or 'full'}"
        return key + (f"|{self.mode}" if self.mode != "chat" else "")

    @property
    def _details_key(self) -> str:
        key = ""
        if self.tokenizer or self.trust_remote_code or self.load_kwargs or self.options:
            details = canonical({"tokenizer": self.tokenizer, "trust_remote_code": self.trust_remote_code,
                                 "load_kwargs": self.load_kwargs, "options": self.options})
            key += "|" + hashlib.sha1(details.encode()).hexdigest()[:8]
        if self.adapter_location is not None:  # the base's key, and the adapter on it
            key += f"|adapter={self.adapter_location}"
        return key

    @functools.cached_property
    def estimate_key(self) -> str:
        """Everything an estimate may depend on: the whole spec but its id."""
        values = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("id", "builtin", "about")}
        return hashlib.sha256(canonical(values).encode()).hexdigest()

    def with_changes(self, **changes: Any) -> ModelSpec:
        """A copy with some fields changed (validated like a new spec)."""
        return replace(self, **changes)

    def to_mapping(self, *, warn: bool = False) -> dict[str, Any]:
        """The YAML entry for this spec: non-default fields, secrets as ``${ENV}`` only.

        ``warn`` (when saving) logs, once per model and field, what is not written.
        """
        return spec_mapping(self, warn=warn)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={v!r}" for k, v in self.to_mapping().items()
                          if not isinstance(v, dict) or v)
        return f"ModelSpec(id={self.id!r}, {shown})"
