"""GGUF files: where a spec's file is, and what its metadata says, without reading a tensor.

GGUF is what llama.cpp, Ollama and LM Studio keep on disk. The ``gguf``
package's reader memory-maps the file and reads its header: the architecture,
layer and head counts, the context length and every tensor's shape and type.
That is enough to know the weights' bytes (exactly what llama.cpp allocates
for them), the parameter count, and the KV cache for any context length. The
reader is slow on large vocabularies (~2 s), so results are kept per file
identity (path, size, modification time).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config.spec import ModelSpec
from .errors import ModelLoadingError

__all__ = [
    "AUTO_CONTEXT_FLOOR",
    "AUTO_CONTEXT_STEP",
    "DEFAULT_CONTEXT",
    "GgufInfo",
    "compute_buffer_bytes",
    "context_for",
    "gguf_path",
    "is_gguf",
    "kv_cache_bytes",
    "read_gguf",
]

#: The context a model gets when its spec names none: its trained context, at most this many tokens.
DEFAULT_CONTEXT = 4096
#: ``max_context: auto`` picks a multiple of this, never below the floor.
AUTO_CONTEXT_STEP = 256
AUTO_CONTEXT_FLOOR = 512
_UBATCH = 512  # llama.cpp's default micro-batch: its compute buffers scale with it


@dataclass(frozen=True)
class GgufInfo:
    """What a GGUF file's header says about the model in it."""

    path: Path
    size: int
    modified_ns: int
    architecture: str
    block_count: int
    head_count: int
    head_count_kv: int
    embedding_length: int
    head_dim: int
    context_length: int
    vocab_size: int
    tensor_bytes: int
    parameters: int

    @property
    def identity(self) -> str:
        """What a converted copy of this file is keyed by: it changes when the file does."""
        return f"{self.path}|{self.size}|{self.modified_ns}"


def gguf_path(spec: ModelSpec) -> Path | None:
    """The local GGUF file a spec names: ``source`` itself, or ``gguf_file`` in the source folder or Hub cache."""
    if spec.local_path is not None:
        if spec.local_path.suffix.lower() == ".gguf":
            return spec.local_path
        if spec.gguf_file:
            return spec.local_path / spec.gguf_file
        return None
    if spec.gguf_file and spec.source:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.source, spec.gguf_file, revision=spec.revision)
        return Path(found) if isinstance(found, str) else None
    return None


def is_gguf(spec: ModelSpec) -> bool:
    return bool(spec.gguf_file) or (spec.local_path is not None and spec.local_path.suffix.lower() == ".gguf")


def read_gguf(path: Path) -> GgufInfo:
    """The header of a GGUF file (:class:`ModelLoadingError` for a missing or unreadable one)."""
    try:
        stat = os.stat(path)
    except OSError as error:
        raise ModelLoadingError(f"cannot read the GGUF file {str(path)!r}: {error.strerror}") from None
    return _read(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=32)
def _read(path: str, size: int, modified_ns: int) -> GgufInfo:
    from gguf import GGUFReader

    try:
        reader = GGUFReader(path)
    except (ValueError, OSError, IndexError) as error:
        raise ModelLoadingError(f"{path!r} is not a readable GGUF file ({error}); the download may be "
                                "incomplete") from None
    fields = reader.fields
    architecture = str(_field(fields, "general.architecture") or "llama")

    def number(name: str, default: int = 0) -> int:
        value = _field(fields, f"{architecture}.{name}")
        return int(value) if isinstance(value, (int, float)) else default

    head_count = number("attention.head_count", 1)
    embedding = number("embedding_length")
    vocab = number("vocab_size") or len(_field(fields, "tokenizer.ggml.tokens") or [])
    return GgufInfo(
        path=Path(path), size=size, modified_ns=modified_ns, architecture=architecture,
        block_count=number("block_count"), head_count=head_count,
        head_count_kv=number("attention.head_count_kv", head_count), embedding_length=embedding,
        head_dim=number("attention.key_length") or (embedding // head_count if head_count else 0),
        context_length=number("context_length", DEFAULT_CONTEXT), vocab_size=vocab,
        tensor_bytes=sum(int(t.n_bytes) for t in reader.tensors),
        parameters=sum(int(t.n_elements) for t in reader.tensors))


def _field(fields: Any, name: str) -> Any:
    found = fields.get(name)
    if found is None:
        return None
    return found.contents()


def kv_cache_bytes(info: GgufInfo, n_ctx: int, element_bytes: int = 2) -> int:
    """Keys and values for ``n_ctx`` tokens: 2 × layers × tokens × kv heads × head size × element bytes."""
    return 2 * info.block_count * n_ctx * info.head_count_kv * info.head_dim * element_bytes


def compute_buffer_bytes(info: GgufInfo, n_ctx: int) -> int:
    """llama.cpp's scratch memory for one forward pass: an estimate (metadata cannot say exactly).

    The buffer is sized for the graph's peak, which is either the logits of
    a micro-batch (512 tokens × vocabulary, float32) or, at long contexts,
    the attention scores (context × micro-batch × heads, float32) with the
    keys and values they read. Measured on SmolLM2-135M it is within 1.1% at
    every context from 512 to 8192 tokens; the measured figure replaces it
    once the model is loaded.
    """
    ubatch = min(_UBATCH, n_ctx)
    logits = ubatch * (info.vocab_size + 3 * info.embedding_length) * 4
    attention = (n_ctx * ubatch * info.head_count * 4 + n_ctx * info.head_count_kv * info.head_dim * 8
                 + ubatch * info.embedding_length * 32)
    return max(logits, attention)


def context_for(spec: ModelSpec, info: GgufInfo) -> int:
    """The context a spec asks for: its ``max_context``, else the trained one up to :data:`DEFAULT_CONTEXT`."""
    if isinstance(spec.max_context, int):
        return spec.max_context
    if spec.max_context == "auto":
        return AUTO_CONTEXT_FLOOR
    return min(info.context_length or DEFAULT_CONTEXT, DEFAULT_CONTEXT)
