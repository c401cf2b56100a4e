"""How much memory a checkpoint will take, read from metadata without loading weights.

Weights come from safetensors headers (a few KB per file): local files,
sharded checkpoints through their index, files already in the Hugging Face
cache, and, when online, the Hub's safetensors metadata. The count is
adjusted for the target dtype and 4/8-bit quantization. The KV cache for
``max_context`` tokens and a stated overhead are added. Each part says how it
was obtained.
"""

from __future__ import annotations

import json
import logging
import struct
import threading
from collections.abc import Iterable, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol

from .config.spec import ModelSpec
from .errors import ModelLoadingError
from .gguf.files import gguf_path, is_gguf, read_gguf
from .reports import MemoryEstimate
from .support.units import format_bytes

__all__ = ["EstimateCache", "adapter_folder", "adapter_slice", "checkpoint_shapes",
           "estimate_checkpoint", "read_safetensors_header", "remote_estimate", "with_adapter"]

log = logging.getLogger(__name__)

_DTYPE_BYTES = {
    "F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2,
    "F8_E4M3": 1, "F8_E5M2": 1, "F8_E8M0": 1, "I8": 1, "U8": 1, "BOOL": 1, "F4": 0.5, "F6_E2M3": 0.75,
    "F6_E3M2": 0.75,
}
_FLOAT_DTYPES = {"F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"}
_TARGET_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
_CONFIG_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
_QUANTIZED_BYTES = {"4bit": 0.5 + 4 / 64, "8bit": 1.0}  # 4-bit: one fp32 absmax per 64 values
_NOT_QUANTIZED = ("embed", "lm_head", "wte", "wpe", "norm", "ln_", "shared")
_DEFAULT_CONTEXT = 4096
_OVERHEAD_FRACTION = 0.08
_OVERHEAD_FIXED = 16 * 1024 * 1024
_MAX_HEADER = 100 * 1024 * 1024
# What reading metadata from the Hub or a cache can raise (Hub and network errors are OSErrors).
OVERHEAD_RULE = f"{_OVERHEAD_FRACTION:.0%} of weights and KV cache + 16 MiB (activations, allocator slack)"




class Estimator(Protocol):
    """What computes an estimate: a backend (``Backend.estimate``)."""

    def estimate(self, spec: ModelSpec) -> MemoryEstimate: ...


class EstimateCache:
    """Estimates keyed by everything they depend on (:attr:`ModelSpec.estimate_key`).

    Two ids on the same weights with different ``max_context`` get different
    estimates; two ids with identical specs share one. Computing one may read
    files or the network, so callers hold no manager lock.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._estimates: dict[str, MemoryEstimate] = {}

    def get(self, spec: ModelSpec, backend: Estimator, *, refresh: bool = False) -> MemoryEstimate:
        key = spec.estimate_key
        with self._lock:
            found = None if refresh else self._estimates.get(key)
        if found is None:
            found = backend.estimate(spec)
            with self._lock:
                self._estimates[key] = found
        return found if found.model_id == spec.id else replace(found, model_id=spec.id)

    def cached(self, spec: ModelSpec) -> MemoryEstimate | None:
        with self._lock:
            found = self._estimates.get(spec.estimate_key)
        return found if found is None or found.model_id == spec.id else replace(found, model_id=spec.id)


def remote_estimate(model_id: str) -> MemoryEstimate:
    """A model served elsewhere holds no local memory."""
    return MemoryEstimate(model_id, 0, 0, 0, 0, "served remotely", "served remotely", "served remotely")


def read_safetensors_header(path: str | Path) -> dict[str, Any]:
    """The JSON header of a safetensors file: tensor name → dtype, shape, offsets.

    Raises ``ValueError`` for a file that is not a valid safetensors file.
    """
    path = Path(path)
    with path.open("rb") as handle:
        prefix = handle.read(8)
        if len(prefix) != 8:
            raise ValueError(f"{path} is too short to be a safetensors file")
        (size,) = struct.unpack("<Q", prefix)
        if size > min(_MAX_HEADER, path.stat().st_size - 8):
            raise ValueError(f"{path} has a corrupted safetensors header (length {size})")
        try:
            header = json.loads(handle.read(size))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} has a corrupted safetensors header: {error}") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path} has a corrupted safetensors header")
    header.pop("__metadata__", None)
    return header


def _tensors_from_header(header: Mapping[str, Any]) -> Iterable[tuple[str, str, int]]:
    for name, info in header.items():
        count = 1
        for dimension in info["shape"]:
            count *= int(dimension)
        yield name, info["dtype"], count


def _local_tensors(folder: Path) -> tuple[list[tuple[str, str, int]], str] | None:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        method = f"safetensors headers of {len(files)} shards"
    else:
        files = sorted(p.name for p in folder.glob("*.safetensors"))
        method = "safetensors header" if len(files) == 1 else f"safetensors headers of {len(files)} files"
    if not files:
        return None
    tensors = [t for name in files for t in _tensors_from_header(read_safetensors_header(folder / name))]
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
        return json.loads((folder / "config.json").read_text())
    if spec.local_path or spec.required_memory is not None:  # a declared size needs no download
        return None
    from huggingface_hub import constants, hf_hub_download

    if constants.HF_HUB_OFFLINE or not spec.source:
        return None
    token = spec.token.resolve() if spec.token else None
    return json.loads(Path(hf_hub_download(spec.source, "config.json", revision=spec.revision,
                                           token=token)).read_text())


def _weights_bytes(tensors: Iterable[tuple[str, str, int]], spec: ModelSpec) -> tuple[int, int, str]:
    total, parameters = 0.0, 0
    target = _TARGET_BYTES.get(spec.dtype)
    quantized = _QUANTIZED_BYTES.get(spec.quantization or "")
    for name, dtype, count in tensors:
        parameters += count
        size = _DTYPE_BYTES.get(dtype, 2)
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
    config = config.get("text_config", config)
    layers = config.get("num_hidden_layers") or config.get("n_layer") or config.get("num_layers")
    heads = config.get("num_attention_heads") or config.get("n_head")
    hidden = config.get("hidden_size") or config.get("n_embd")
    if not (layers and heads and hidden):
        return 0, "unknown: config.json lacks layer and head counts"
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    tokens = spec.max_context if isinstance(spec.max_context, int) else min(
        config.get("max_position_embeddings") or _DEFAULT_CONTEXT, _DEFAULT_CONTEXT)
    stored = config.get("dtype") or config.get("torch_dtype") or "float16"
    element = _TARGET_BYTES.get(spec.dtype) or _CONFIG_DTYPE_BYTES.get(str(stored), 2)
    size = 2 * layers * kv_heads * head_dim * tokens * element
    context = "max_context" if isinstance(spec.max_context, int) else "default context"
    return int(size), f"2 × {layers} layers × {kv_heads} kv heads × {head_dim} × {tokens} tokens ({context}) × {element} B"


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


# -- LoRA adapters ---------------------------------------------------------------------------------

def adapter_folder(spec: ModelSpec) -> Path | None:
    """A PEFT adapter's folder on this machine: the local folder, or a Hub adapter in the cache; else ``None``."""
    location = spec.adapter_location
    if location is None:
        return None
    if Path(location).is_absolute():
        return Path(location) if Path(location).is_dir() else None
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(location, "adapter_config.json")
    return Path(found).parent if isinstance(found, str) else None


def checkpoint_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape, from the safetensors headers of a checkpoint folder (nothing is loaded)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in sorted(folder.glob("*.safetensors")):
        for name, info in read_safetensors_header(path).items():
            shapes[name] = tuple(int(d) for d in info["shape"])
    return shapes


def _adapter_weights(spec: ModelSpec) -> tuple[int, str]:
    """The adapter's own bytes, from its file's header: a PEFT folder's safetensors, or a GGUF LoRA's tensors."""
    location = spec.adapter_location or ""
    if location.lower().endswith(".gguf") and Path(location).is_file():
        from gguf import GGUFReader

        size = sum(int(t.n_bytes) for t in GGUFReader(location).tensors)
        return size, f"adapter: GGUF header ({format_bytes(size)})"
    folder = adapter_folder(spec)
    file = folder / "adapter_model.safetensors" if folder is not None else None
    if file is None or not file.exists():
        return 0, "adapter: unknown (no adapter_model.safetensors here)"
    tensors = list(_tensors_from_header(read_safetensors_header(file)))
    size = sum(int(_DTYPE_BYTES.get(dtype, 4) * count) for _, dtype, count in tensors)
    return size, f"adapter: safetensors header ({format_bytes(size)})"


def with_adapter(spec: ModelSpec, estimate: MemoryEstimate) -> MemoryEstimate:
    """The base's estimate plus the adapter's own weights (read before loading), for an adapter's spec."""
    if spec.adapter is None:
        return estimate
    try:
        size, method = _adapter_weights(spec)
    except (ValueError, KeyError, OSError) as error:
        raise ModelLoadingError(f"cannot read the adapter of {spec.id!r}: {error}", model_id=spec.id) from None
    return replace(estimate, weights_bytes=estimate.weights_bytes + size, total_bytes=estimate.total_bytes + size,
                   weights_method=f"{estimate.weights_method} + {method}", adapter_bytes=size)


def adapter_slice(estimate: MemoryEstimate) -> MemoryEstimate:
    """What an adapter adds on a base that is loaded already: its own weights, nothing else."""
    size = estimate.adapter_bytes or 0
    method = estimate.weights_method.rpartition(" + ")[2]
    return replace(estimate, weights_bytes=size, kv_cache_bytes=0, overhead_bytes=0, total_bytes=size,
                   weights_method=method, kv_cache_method="its base's", overhead_method="its base's")


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
        found = _local_tensors(folder) if folder and folder.is_dir() else None
    except (ValueError, KeyError, OSError) as error:
        raise ModelLoadingError(f"cannot read the checkpoint of {spec.id!r}: {error}. The download may be "
                                "incomplete: delete the file and fetch it again.", model_id=spec.id) from None
    if found is None and not spec.local_path and spec.required_memory is None:  # a declared size needs no Hub
        try:
            found = _hub_tensors(spec)
        except Exception as error:  # noqa: BLE001 - network, auth, missing repo: the estimate is only advice
            log.info("no Hub metadata for %r: %s", spec.id, error)
    try:
        config = _model_config(spec, folder)
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
