"""How much memory a checkpoint will take, read from metadata without loading weights.

Weights come from safetensors headers (a few KB per file): local files,
sharded checkpoints through their index, files already in the Hugging Face
cache, and, when online, the Hub's safetensors metadata. The count is
adjusted for the target dtype and 4/8-bit quantization. The KV cache for
``max_context`` tokens and a stated overhead are added. Each part says how it
was obtained.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from ..config.spec import ModelSpec
from ..errors import ModelLoadingError
from ..gguf.files import gguf_path, is_gguf, read_gguf
from ..reports import MemoryEstimate
from ..support.regular_files import load_json
from ..support.units import excerpt, format_bytes
from .adapters import with_adapter
from .learned import corrected
from .safetensors import DTYPE_BYTES, read_safetensors_header, shard_files, tensors_from_header

__all__ = ["OVERHEAD_RULE", "EstimateCache", "estimate_checkpoint", "remote_estimate"]

log = logging.getLogger(__name__)

_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_TARGET_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_CONFIG_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_QUANTIZED_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0}  # 4-bit: one fp32 absmax per 64 values
_NOT_QUANTIZED = ("embed", "lm_head", "wte", "wpe", "norm", "ln_", "shared")
_DEFAULT_CONTEXT = 4096
_OVERHEAD_FRACTION = 0.08
_OVERHEAD_FIXED = 16 * 1024 * 1024
_MAX_CONFIG = 16 * 1024 * 1024  # a model's config.json is a few KB
#: The largest value believed for a count in config.json (layers, heads, sizes, context).
_MAX_COUNT = 2**24
_MAX_CONTEXT = 2**30
# What reading metadata from the Hub or a cache can raise (Hub and network errors are OSErrors).
OVERHEAD_RULE = f"{_OVERHEAD_FRACTION:.0%} of weights and KV cache + 16 MiB (activations, allocator slack)"




class Estimator(Protocol):
    """What computes an estimate: a backend (``Backend.estimate``)."""

    def estimate(self, spec: ModelSpec) -> MemoryEstimate: ...


class EstimateCache:
    """Estimates keyed by everything they depend on (:attr:`ModelSpec.estimate_key`), each corrected by
    what past loads of its kind measured (:mod:`.learned`) when it is handed out.

    Two ids on the same weights with different ``max_context`` get different
    estimates; two ids with identical specs share one. Computing one may read
    files or the network, so callers hold no manager lock. A spec whose source
    has no estimate is answered without its key (hashing a whole spec is most
    of what the first status of 10,000 never-loaded ids would cost).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._estimates: dict[str, MemoryEstimate] = {}
        self._sources: set[str | None] = set()  # the sources of the specs estimated (a key includes its source)

    def get(self, spec: ModelSpec, backend: Estimator, *, refresh: bool = False) -> MemoryEstimate:
        key = spec.estimate_key
        with self._lock:
            found = None if refresh else self._estimates.get(key)
        if found is None:
            found = backend.estimate(spec)
            with self._lock:
                self._estimates[key] = found
                self._sources.add(spec.source)
        return corrected(spec, found if found.model_id == spec.id else replace(found, model_id=spec.id))

    def cached(self, spec: ModelSpec) -> MemoryEstimate | None:
        with self._lock:
            if spec.source not in self._sources:
                return None
            found = self._estimates.get(spec.estimate_key)
        if found is None:
            return None
        return corrected(spec, found if found.model_id == spec.id else replace(found, model_id=spec.id))


def remote_estimate(model_id: str) -> MemoryEstimate:
    """A model served elsewhere holds no local memory."""
    return MemoryEstimate(model_id, 0, 0, 0, 0, "served remotely", "served remotely", "served remotely")


def _local_tensors(folder: Path) -> tuple[list[tuple[str, str, int]], str] | None:
    if (folder / "model.safetensors.index.json").exists():
        files = shard_files(folder)
        method = f"safetensors headers of {len(files)} shards"
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        method = "safetensors header" if len(files) == 1 else f"safetensors headers of {len(files)} files"
    if not files:
        return None
    tensors = [t for name in files for t in tensors_from_header(read_safetensors_header(folder / name))]
    return tensors, method


def _hub_tensors(spec: ModelSpec) -> tuple[list[tuple[str, str, int]], str] | None:
    from huggingface_hub import constants, get_safetensors_metadata

    if constants.HF_HUB_OFFLINE:
        return None
    token = spec.token.resolve() if spec.token else None
    if not spec.source:
        return None
    metadata = get_safetensors_metadata(spec.source, revision=spec.revision, token=token)
    tensors = [(name, str(info.dtype), int(info.parameter_count))
               for file in metadata.files_metadata.values() for name, info in file.tensors.items()]
    return tensors, "Hub safetensors metadata"


def _cached_folder(spec: ModelSpec) -> Path | None:
    """The snapshot folder of a Hub model already in the local cache, if its config is there."""
    from huggingface_hub import try_to_load_from_cache

    if not spec.source:
        return None
    found = try_to_load_from_cache(spec.source, "config.json", revision=spec.revision)
    return Path(found).parent if isinstance(found, str) else None


def _model_config(spec: ModelSpec, folder: Path | None) -> dict[str, Any] | None:
    if folder and (folder / "config.json").exists():
        found = load_json(folder / "config.json", _MAX_CONFIG)
        return found if isinstance(found, dict) else None
    if spec.local_path or spec.required_memory is not None:  # a declared size needs no download
        return None
    from huggingface_hub import constants, hf_hub_download

    if constants.HF_HUB_OFFLINE or not spec.source:
        return None
    token = spec.token.resolve() if spec.token else None
    found = load_json(hf_hub_download(spec.source, "config.json", revision=spec.revision, token=token), _MAX_CONFIG)
    return found if isinstance(found, dict) else None


def _weights_bytes(tensors: Iterable[tuple[str, str, int]], spec: ModelSpec) -> tuple[int, int, str]:
    total, parameters = 0.0, 0
    target = _TARGET_BYTES.get(spec.dtype)
    quantized = _QUANTIZED_BYTES.get(spec.quantization or "")
    for name, dtype, count in tensors:
        parameters += count
        size = float(DTYPE_BYTES.get(dtype, 2))
        if dtype in _FLOAT_DTYPES and target:
            size = target
        if quantized and name.endswith(".weight") and not any(part in name for part in _NOT_QUANTIZED):
            size = min(size, quantized)
        total += size * count
    note = [f"as {spec.dtype}" if target else "stored dtypes"]
    if quantized:
        note.append(f"{spec.quantization} linear layers")
    return int(total), parameters, ", ".join(note)


def _kv_cache_bytes(config: Mapping[str, Any] | None, spec: ModelSpec) -> tuple[int, str]:
    if config is None:
        return 0, "unknown: no config.json"
    text = config.get("text_config", config)
    config = text if isinstance(text, Mapping) else config
    layers = _count(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _count(config, "num_attention_heads", "n_head")
    hidden = _count(config, "hidden_size", "n_embd")
    if not (layers and heads and hidden):
        return 0, "unknown: config.json lacks layer and head counts (whole numbers)"
    kv_heads = _count(config, "num_key_value_heads") or heads
    head_dim = _count(config, "head_dim") or hidden // heads
    trained = _count(config, "max_position_embeddings", limit=_MAX_CONTEXT)
    tokens = spec.max_context if isinstance(spec.max_context, int) else min(trained or _DEFAULT_CONTEXT,
                                                                            _DEFAULT_CONTEXT)
    stored = config.get("dtype") or config.get("torch_dtype") or "float16"
    element = _TARGET_BYTES.get(spec.dtype) or _CONFIG_DTYPE_BYTES.get(str(stored), 2)
    size = 2 * layers * kv_heads * head_dim * tokens * element
    context = "max_context" if isinstance(spec.max_context, int) else "default context"
    return int(size), f"2 × {layers} layers × {kv_heads} kv heads × {head_dim} × {tokens} tokens ({context}) × {element} B"


def _count(config: Mapping[str, Any], *keys: str, limit: int = _MAX_COUNT) -> int | None:
    """The first of ``keys`` that config.json sets to a whole number from 1 to ``limit``; ``None`` otherwise."""
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= limit:
            return value
    return None


def _dequantized_gguf(spec: ModelSpec) -> MemoryEstimate:
    """A GGUF file as transformers holds it: every parameter in the run dtype (float32 unless set)."""
    path = gguf_path(spec)
    if path is None or not path.exists():
        return MemoryEstimate(spec.id, 0, 0, _OVERHEAD_FIXED, _OVERHEAD_FIXED, "unknown: the GGUF file is not here",
                              "unknown", OVERHEAD_RULE, known=False)
    info = read_gguf(path)
    element = _TARGET_BYTES.get(spec.dtype, 4)
    weights = info.parameters * element
    tokens = spec.max_context if isinstance(spec.max_context, int) else min(info.context_length, _DEFAULT_CONTEXT)
    kv = 2 * info.block_count * info.head_count_kv * info.head_dim * tokens * element
    context = "max_context" if isinstance(spec.max_context, int) else "default context"
    overhead = int(_OVERHEAD_FRACTION * (weights + kv)) + _OVERHEAD_FIXED
    dtype = spec.dtype if spec.dtype in _TARGET_BYTES else "float32"
    return MemoryEstimate(
        spec.id, weights, kv, overhead, weights + kv + overhead,
        f"GGUF header ({info.parameters:,} parameters), dequantized to {dtype}",
        f"2 × {info.block_count} layers × {info.head_count_kv} kv heads × {info.head_dim} × {tokens} tokens "
        f"({context}) × {element} B", OVERHEAD_RULE, info.parameters)


def _with_required(spec: ModelSpec, estimate: MemoryEstimate) -> MemoryEstimate:
    """``required_memory``, when a spec sets it, is the total whatever the metadata says."""
    if spec.required_memory is None:
        return estimate
    return replace(estimate, total_bytes=spec.required_memory, known=True,
                   overhead_method=f"total set by required_memory ({format_bytes(spec.required_memory)})")


def estimate_checkpoint(spec: ModelSpec) -> MemoryEstimate:
    """Estimate a transformers checkpoint from its metadata, without loading weights.

    ``required_memory`` in the spec, when set, is the total. Where no metadata
    can be read (offline and not cached, no safetensors), the estimate says so
    and ``known`` is false. A corrupted local checkpoint is a
    :class:`ModelLoadingError`. A GGUF file is read from its header: it is
    dequantized when transformers loads it.
    """
    if spec.adapter is not None:
        return with_adapter(spec, estimate_checkpoint(replace(spec, adapter=None, base=None)))
    if is_gguf(spec):
        return _with_required(spec, _dequantized_gguf(spec))
    folder = spec.local_path or _cached_folder(spec)
    try:
        found = _local_tensors(_readable(folder)) if folder and folder.is_dir() else None
    except PermissionError as error:
        raise ModelLoadingError(excerpt(f"cannot read the checkpoint of {spec.id!r}: permission denied on "
                                        f"{error.filename or folder}; give this user read access to the folder and "
                                        "its files"), model_id=spec.id) from None
    except (ValueError, KeyError, OSError) as error:
        raise ModelLoadingError(excerpt(f"cannot read the checkpoint of {spec.id!r}: {error}. The download may be "
                                        "incomplete: delete the file and fetch it again."), model_id=spec.id) from None
    if found is None and not spec.local_path and spec.required_memory is None:  # a declared size needs no Hub
        try:
            found = _hub_tensors(spec)
        except Exception as error:  # noqa: BLE001 - network, auth, missing repo: the estimate is only advice
            log.info("no Hub metadata for %r: %s", spec.id, error)
    try:
        config = _model_config(spec, folder)
    except PermissionError as error:
        raise ModelLoadingError(excerpt(f"cannot read the config.json of {spec.id!r}: permission denied on "
                                        f"{error.filename}; give this user read access to it"),
                                model_id=spec.id) from None
    except Exception as error:  # noqa: BLE001 - same: advice only
        log.info("no config.json for %r: %s", spec.id, error)
        config = None
    kv_bytes, kv_method = _kv_cache_bytes(config, spec)
    if found is None:
        weights, parameters, weights_method, known = 0, None, "unknown: no safetensors metadata", False
    else:
        tensors, source = found
        weights, parameters, how = _weights_bytes(tensors, spec)
        weights_method, known = f"{source}, {how}", True
    overhead = int(_OVERHEAD_FRACTION * (weights + kv_bytes)) + _OVERHEAD_FIXED
    total = weights + kv_bytes + overhead
    return _with_required(spec, MemoryEstimate(spec.id, weights, kv_bytes, overhead, total, weights_method,
                                               kv_method, OVERHEAD_RULE, parameters, known))


def _readable(folder: Path) -> Path:
    """``folder``, or a :class:`PermissionError` naming it when this user may not list or enter it."""
    if not os.access(folder, os.R_OK | os.X_OK):
        raise PermissionError(13, "Permission denied", str(folder))
    return folder
