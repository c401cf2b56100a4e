"""What a GGUF model takes under llama.cpp, from its header: weights, KV cache (in its cache types), buffers.

The weights are the file's tensor bytes and the KV cache follows from the
header exactly; the compute buffer is estimated (:func:`~...gguf.files.compute_buffer_bytes`)
and, once loaded, measured from llama.cpp's log. What past loads measured
corrects the estimate (:mod:`...estimates.learned`).
"""

from __future__ import annotations

from ...config.spec import ModelSpec
from ...errors import ConfigurationError, ModelLoadingError
from ...estimates import Lesson
from ...gguf.files import AUTO_CONTEXT_FLOOR, GgufInfo, compute_buffer_bytes, kv_cache_bytes
from ...reports import MemoryEstimate
from ...support.units import format_bytes
from . import adapters as lora
from .validation import cache_type_name, cache_type_of

__all__ = ["FIXED_BYTES", "adapter_bytes", "corrected_estimate", "estimate_at", "kv_bytes", "kv_types",
           "output_bytes"]

_FLOAT_BYTES = 4  # llama.cpp's outputs (logits, embeddings) are float32
_EMBED_SEQUENCES = 256  # embed mode: llama-cpp-python's n_seq_max, min(n_batch, llama_max_parallel_sequences())
_BATCH = 512  # llama-cpp-python's n_batch unless load_kwargs set it
FIXED_BYTES = 8 * 2**20  # contexts, graphs, the sampler: memory llama.cpp's log does not report


def output_bytes(spec: ModelSpec, info: GgufInfo) -> int:
    """llama.cpp's output buffer: the logits of one token in chat mode; in embed mode, logits and an
    embedding for each sequence a batch may hold (llama-cpp-python allows 256 sequences at once)."""
    if spec.mode != "embed":
        return info.vocab_size * _FLOAT_BYTES
    batch = spec.load_kwargs.get("n_batch", _BATCH)
    sequences = min(batch if isinstance(batch, int) else _BATCH, _EMBED_SEQUENCES)
    return (info.vocab_size + info.embedding_length) * sequences * _FLOAT_BYTES


def adapter_bytes(spec: ModelSpec) -> int | None:
    """A LoRA adapter's own bytes (its file's tensors, as llama.cpp copies them); ``None`` for a plain model.

    The file was checked at registration: one unreadable now (gone, replaced by a FIFO) changed since, a
    :class:`ModelLoadingError` like the load's own check.
    """
    if spec.adapter is None:
        return None
    try:
        return lora.adapter_info(spec).tensor_bytes
    except ConfigurationError as error:
        raise ModelLoadingError(f"{error} (checked again: the file changed since registration?)",
                                model_id=spec.id) from None


def kv_bytes(spec: ModelSpec, info: GgufInfo, tokens: int) -> int:
    """The KV cache for ``tokens``, in the cache types ``load_kwargs`` names (f16 unless set)."""
    return kv_cache_bytes(info, tokens, cache_type_of(spec.load_kwargs, "type_k"),
                          cache_type_of(spec.load_kwargs, "type_v"))


def kv_types(spec: ModelSpec) -> str:
    """``f16``, or ``K q8_0, V f16``: the cache types (a secret counts as f16 until it is read at load)."""
    key, value = (cache_type_name(cache_type_of(spec.load_kwargs, name)) for name in ("type_k", "type_v"))
    return key if key == value else f"K {key}, V {value}"


def corrected_estimate(spec: ModelSpec, info: GgufInfo, adapter: int | None, learned: Lesson | None,
                       tokens: int) -> MemoryEstimate:
    """The estimate at ``tokens`` with what past loads taught (read once, before the policy decides)."""
    estimate = estimate_at(spec, info, tokens, adapter)
    return learned.apply(estimate) if learned is not None else estimate


def estimate_at(spec: ModelSpec, info: GgufInfo, tokens: int, adapter: int | None = None) -> MemoryEstimate:
    """The memory of ``spec`` at a context of ``tokens``: weights (and ``adapter`` bytes), KV cache, buffers."""
    kv = kv_bytes(spec, info, tokens)
    overhead = (compute_buffer_bytes(info, tokens, embed=spec.mode == "embed") + output_bytes(spec, info)
                + FIXED_BYTES)
    weights = info.tensor_bytes + (adapter or 0)
    total = spec.required_memory if spec.required_memory is not None else weights + kv + overhead
    context = ("max_context: auto" + (", at its floor" if tokens == AUTO_CONTEXT_FLOOR else "")
               if spec.max_context == "auto" else "max_context" if spec.max_context else "default context")
    adapter_text = f" + adapter: GGUF header ({format_bytes(adapter)})" if adapter is not None else ""
    return MemoryEstimate(
        spec.id, weights, kv, overhead, total,
        f"GGUF header: the tensors' bytes as stored ({info.parameters:,} parameters){adapter_text}",
        f"2 × {info.block_count} layers × {tokens} tokens ({context}) × {info.head_count_kv} kv heads × "
        f"{info.head_dim} ({kv_types(spec)})",
        "compute buffer (estimated: the larger of a 512-token batch's logits and its attention scores) + output "
        f"buffer ({'logits and embeddings of 256 sequences' if spec.mode == 'embed' else 'one token’s logits'}) + 8 MiB"
        + (f"; total set by required_memory ({format_bytes(total)})" if spec.required_memory is not None else ""),
        info.parameters, adapter_bytes=adapter, unmeasured_bytes=0 if spec.required_memory is not None else FIXED_BYTES)
