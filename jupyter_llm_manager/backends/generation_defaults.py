"""What a local model's generation gets by default: its files' recommended settings, else a mild repetition penalty.

Greedy decoding of a small model loops ("la femme au martyre, la femme au
martyre, …") until the token limit; a penalty of 1.1 on the tokens of the
answer's last 64 (Ollama's default) ends such answers. The precedence,
highest first:

1. what the call passes (``generate(..., repetition_penalty=1.0)``);
2. the spec's ``generation:``;
3. the model's own files: a checkpoint's ``generation_config.json`` (its
   folder, or the Hugging Face cache; never the network), a GGUF file's
   ``general.sampling.*`` metadata;
4. :data:`DEFAULT_REPETITION_PENALTY` over the last :data:`DEFAULT_PENALTY_WINDOW` tokens.

``repetition_penalty=1.0`` at any level turns the penalty off, and with it
the stop before a passage's third appearance: the model's raw output.
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType, SimpleNamespace
from typing import Any

from ..config.spec import ModelSpec
from ..errors import InvalidGenerationParameters
from ..generation import GenerationParams
from ..gguf.files import GgufInfo

__all__ = ["DEFAULT_PENALTY_WINDOW", "DEFAULT_REPETITION_PENALTY", "LOCAL_DEFAULTS", "NO_DEFAULTS",
           "GenerationDefaults", "checkpoint_defaults", "gguf_defaults"]

log = logging.getLogger(__name__)

#: The penalty a local model gets where neither the call, its spec nor its files set one (Ollama's default).
DEFAULT_REPETITION_PENALTY = 1.1
#: How many of the answer's latest tokens the penalty looks at (Ollama's and llama.cpp's ``repeat_last_n``).
DEFAULT_PENALTY_WINDOW = 64

#: What a model's files may recommend, in :class:`GenerationParams` terms.
_RECOMMENDABLE = ("temperature", "top_p", "top_k", "do_sample", "repetition_penalty")
#: GGUF's ``general.sampling.*`` keys (what llama.cpp's converter writes) and the parameters they are.
_GGUF_NAMES = {"temp": "temperature", "top_p": "top_p", "top_k": "top_k", "penalty_repeat": "repetition_penalty"}
_CONFIG_FILE = "generation_config.json"
_MAX_CONFIG_BYTES = 1 << 20  # a generation config is a few hundred bytes


@dataclass(frozen=True)
class GenerationDefaults:
    """What a call gets where neither it nor the model's spec sets a value (see the module's precedence).

    ``settings`` are the model files' recommendation; ``penalty`` applies
    over the answer's last ``window`` tokens (``None``: all of them) where
    nothing above sets one. A backend that leaves sampling to a server has
    ``penalty=None`` and no settings (:data:`NO_DEFAULTS`).
    """

    settings: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    window: int | None = DEFAULT_PENALTY_WINDOW
    penalty: float | None = DEFAULT_REPETITION_PENALTY
    source: str = ""  # where ``settings`` were read, e.g. "generation_config.json"

    @classmethod
    def recommended(cls, found: Mapping[str, Any], *, source: str,
                    window: int | None = DEFAULT_PENALTY_WINDOW) -> GenerationDefaults:
        """Defaults from what a model's files say; a value a call could not pass is logged and left out.

        A file is not the user's mistake, so its temperature of -1 is skipped
        rather than refused.
        """
        settings: dict[str, Any] = {}
        for name in _RECOMMENDABLE:
            value = found.get(name)
            if value is None:
                continue
            try:
                GenerationParams(**{name: value})
            except InvalidGenerationParameters:
                log.info("%s recommends %s=%r, which is out of range: not used", source, name, value)
                continue
            settings[name] = value
        return cls(MappingProxyType(settings), window, source=source if settings else "")

    def apply(self, params: GenerationParams) -> GenerationParams:
        """``params`` with what it leaves unset taken from the files' settings, then the default penalty.

        A call or spec that sets a temperature chose whether to sample: the
        files' ``do_sample`` does not overrule it.
        """
        changes = {name: value for name, value in self.settings.items() if getattr(params, name) is None
                   and not (name == "do_sample" and params.temperature is not None)}
        if params.repetition_penalty is None and "repetition_penalty" not in changes and self.penalty is not None:
            changes["repetition_penalty"] = self.penalty
        return replace(params, **changes) if changes else params

    def shown(self, generation: Mapping[str, Any]) -> dict[str, Any]:
        """The settings a call without arguments gets from a spec whose ``generation:`` is ``generation``.

        Those of a spec without ``generation:`` are worked out once per defaults (a copy is handed out):
        the status rows of 10,000 ids share a few defaults.
        """
        if not generation:
            return dict(self._shown_alone)
        return self._shown(generation)

    @functools.cached_property
    def _shown_alone(self) -> dict[str, Any]:
        return self._shown({})

    def _shown(self, generation: Mapping[str, Any]) -> dict[str, Any]:
        params = self.apply(GenerationParams.build(generation))
        settings = {f.name: getattr(params, f.name) for f in fields(params)
                    if f.name not in ("extra", "stop") and getattr(params, f.name) is not None}
        if params.stop:
            settings["stop"] = list(params.stop)
        if params.penalized and self.penalty is not None:  # a local backend: the window is ours
            settings["repetition_window"] = self.window
        return {**settings, **params.extra}


#: The defaults of a backend that adds none (a server samples with its own).
NO_DEFAULTS = GenerationDefaults(penalty=None)
#: The defaults of a local model whose files recommend nothing: the default penalty alone.
LOCAL_DEFAULTS = GenerationDefaults()


def gguf_defaults(info: GgufInfo) -> GenerationDefaults:
    """The defaults of a GGUF file: its ``general.sampling.*`` metadata, where it has some.

    ``penalty_last_n`` is the window (-1: the whole answer); 0 means llama.cpp
    applies no penalty, so the file recommends ``repetition_penalty`` 1.0.
    """
    sampling = {name: _shortest(value) for name, value in info.sampling}
    found: dict[str, Any] = {ours: sampling[theirs] for theirs, ours in _GGUF_NAMES.items() if theirs in sampling}
    window: int | None = DEFAULT_PENALTY_WINDOW
    last_n = sampling.get("penalty_last_n")
    if last_n == -1:
        window = None
    elif last_n == 0:
        found["repetition_penalty"] = 1.0
    elif isinstance(last_n, (int, float)) and last_n > 0 and float(last_n).is_integer():
        window = int(last_n)
    return GenerationDefaults.recommended(found, source="GGUF metadata", window=window)


def _shortest(value: float) -> float | int:
    """A float32 from a GGUF header as it was written (0.6, not 0.6000000238); whole numbers as ``int``."""
    if not math.isfinite(value):
        return value
    rounded = float(f"{value:.7g}")
    return int(rounded) if rounded.is_integer() else rounded


def checkpoint_defaults(spec: ModelSpec) -> GenerationDefaults:
    """The defaults of a transformers checkpoint: its ``generation_config.json``, where one is on this machine.

    As transformers reads that file, sampling is off unless it says
    ``do_sample: true``.
    """
    path = _config_path(spec)
    if path is None:
        return LOCAL_DEFAULTS
    try:
        with path.open("rb") as file:
            text = file.read(_MAX_CONFIG_BYTES + 1)
        found = json.loads(text) if len(text) <= _MAX_CONFIG_BYTES else None
    except (OSError, ValueError) as error:
        log.info("cannot read %s of %r: %s", _CONFIG_FILE, spec.id, error)
        return LOCAL_DEFAULTS
    if not isinstance(found, dict):
        log.info("%s of %r is not a JSON object of settings: not used", _CONFIG_FILE, spec.id)
        return LOCAL_DEFAULTS
    return GenerationDefaults.recommended({**found, "do_sample": found.get("do_sample", False)},
                                          source=_CONFIG_FILE)


def _config_path(spec: ModelSpec) -> Path | None:
    """The checkpoint's ``generation_config.json``: in its folder, or in the Hugging Face cache (never fetched)."""
    if spec.local_path is not None:
        path = spec.local_path / _CONFIG_FILE
        return path if path.is_file() else None
    if not spec.source:
        return None
    hub = _hub()
    hub.validate_repo_id(spec.source)  # an id the Hub refuses fails here, as in try_to_load_from_cache
    if not os.path.isdir(os.path.join(hub.constants.HF_HUB_CACHE, "models--" + spec.source.replace("/", "--"))):
        return None  # nothing of it in the cache (its folder, as the Hub names it): one look, not the full lookup
    found = hub.try_to_load_from_cache(spec.source, _CONFIG_FILE, revision=spec.revision)
    return Path(found) if isinstance(found, str) else None


@functools.cache
def _hub() -> SimpleNamespace:
    """The Hub's cache lookups, imported at the first (the status of local models never imports the Hub's
    library; its lazy attributes cost an import each time they are named, which 10,000 status rows notice)."""
    from huggingface_hub import constants, try_to_load_from_cache
    from huggingface_hub.utils import validate_repo_id

    return SimpleNamespace(constants=constants, try_to_load_from_cache=try_to_load_from_cache,
                           validate_repo_id=validate_repo_id)
