"""GGUF files: where a spec's file is, and what its header says, without reading a tensor.

GGUF is what llama.cpp, Ollama and LM Studio keep on disk. A source is a
GGUF file when ``gguf_file`` names one, when its name or the name of the link
given ends in ``.gguf``, or when it is a regular file that starts with
``GGUF`` (the suffix-less blobs of the Hugging Face cache and of Ollama).

Its header (read by :mod:`.header` in milliseconds, every count checked
against the file) gives the architecture, layer and head counts, the context
length, the vocabulary size, and the tensors' bytes (exactly what llama.cpp
allocates for the weights): enough for the KV cache at any context length.
A file that is not a regular file or not a valid header is a
:class:`ModelLoadingError` of one line. Answers, refusals included, are kept
per file identity (path, size, modification time, inode), so a status view
reads a file once until it changes.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from ..config.spec import ModelSpec
from ..config.spec_fields import expand_path
from ..errors import ModelLoadingError
from ..support.units import excerpt
from .header import MAGIC, NOT_REGULAR, HeaderFacts, NotGguf, open_regular, read_header, row_bytes

__all__ = [
    "AUTO_CONTEXT_FLOOR",
    "AUTO_CONTEXT_STEP",
    "CACHE_TYPES",
    "DEFAULT_CONTEXT",
    "F16",
    "GgufInfo",
    "cache_type_label",
    "compute_buffer_bytes",
    "context_for",
    "gguf_path",
    "has_gguf_magic",
    "is_gguf",
    "kv_cache_bytes",
    "read_gguf",
    "read_gguf_shapes",
]

#: The context a model gets when its spec names none: its trained context, at most this many tokens.
DEFAULT_CONTEXT = 4096
#: ``max_context: auto`` picks a multiple of this, never below the floor.
AUTO_CONTEXT_STEP = 256
AUTO_CONTEXT_FLOOR = 512
_UBATCH = 512  # llama.cpp's default micro-batch: its compute buffers scale with it

_ADVICE = "the download may be incomplete or the file is not a model: fetch it again"
_CACHED_FILES = 64


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
    sampling: tuple[tuple[str, float], ...] = ()  # ``general.sampling.*``: the settings the file recommends
    kind: str = "model"  # general.type: "model", or "adapter" for a LoRA file
    adapter_type: str | None = None  # adapter.type: "lora" for a LoRA adapter
    weights_type: str = "unknown"  # the ggml type of most of the weights' bytes (``q4_1``): the file's quantization

    @property
    def identity(self) -> str:
        """What a converted copy of this file is keyed by: it changes when the file does."""
        return f"{self.path}|{self.size}|{self.modified_ns}"


# -- which file -------------------------------------------------------------------------------------

def gguf_path(spec: ModelSpec) -> Path | None:
    """The local GGUF file a spec names: ``source`` itself, or ``gguf_file`` in the source folder or Hub cache."""
    if spec.local_path is not None:
        if _named_gguf(spec):
            return spec.local_path
        if spec.gguf_file:
            return spec.local_path / spec.gguf_file
        return spec.local_path if has_gguf_magic(spec.local_path) else None
    if spec.gguf_file and spec.source:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(spec.source, spec.gguf_file, revision=spec.revision)
        return Path(found) if isinstance(found, str) else None
    return None


def is_gguf(spec: ModelSpec) -> bool:
    """Whether a spec's source is a GGUF file: ``gguf_file`` is set, its name (or its link's) ends in
    ``.gguf``, or it is a regular file that starts with ``GGUF`` (a Hugging Face or Ollama blob)."""
    if spec.gguf_file:
        return True
    if spec.local_path is None:
        return False
    return _named_gguf(spec) or has_gguf_magic(spec.local_path)


def _named_gguf(spec: ModelSpec) -> bool:
    """The source's name, or the name of the file its links lead to, ends in ``.gguf``."""
    assert spec.local_path is not None and spec.source is not None
    return ".gguf" in (spec.local_path.suffix.lower(), Path(expand_path(spec.source)).suffix.lower())


def has_gguf_magic(path: Path) -> bool:
    """Whether ``path`` is a regular file whose first 4 bytes are ``GGUF`` (never blocks on a FIFO)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return False
        descriptor = open_regular(path)
    except (OSError, NotGguf):
        return False
    try:
        return os.read(descriptor, len(MAGIC)) == MAGIC
    except OSError:
        return False
    finally:
        os.close(descriptor)


# -- what the header says ---------------------------------------------------------------------------

_answers: OrderedDict[tuple[str, int, int, int], GgufInfo | str] = OrderedDict()  # refusals as their message
_answers_lock = threading.Lock()
#: An answer is kept once its file is this old: a file rewritten within the resolution of its timestamp
#: (same size, same modification time) would otherwise keep the answer of its former content.
_SETTLED_NS = 2 * 10**9


def read_gguf(path: Path) -> GgufInfo:
    """The header of a GGUF file, read once per file identity (path, size, modification time, inode).

    :class:`ModelLoadingError` (one line, at most 500 characters) for a file
    that is missing, not a regular file, or not a GGUF file this reader
    accepts; the refusal is kept too, so a status view does not read a bad
    file again until it changes. A file changed in the last two seconds is
    read again each time (milliseconds): its timestamp cannot yet tell one
    content from the next.
    """
    try:
        found = os.stat(path)
    except OSError as error:
        raise ModelLoadingError(excerpt(f"cannot read the GGUF file {str(path)!r}: {error.strerror}; check "
                                        "the path")) from None
    if not stat.S_ISREG(found.st_mode):
        raise ModelLoadingError(excerpt(f"{str(path)!r} is not a readable GGUF file: {NOT_REGULAR}"))
    resolved = str(Path(path).resolve())
    identity = (resolved, found.st_size, found.st_mtime_ns, found.st_ino)
    with _answers_lock:
        answer = _answers.get(identity)
        if answer is not None:
            _answers.move_to_end(identity)
    if answer is None:
        answer = _read(resolved)
    if isinstance(answer, str):
        raise ModelLoadingError(answer)
    return answer


def _read(path: str) -> GgufInfo | str:
    """Read the header of ``path`` and keep the answer (the info, or the refusal's message)."""
    try:
        descriptor = open_regular(path)
    except OSError as error:
        return excerpt(f"cannot read the GGUF file {path!r}: {error.strerror}; check the path")
    except NotGguf as why:
        return excerpt(f"{path!r} is not a readable GGUF file: {why}")
    try:
        opened = os.fstat(descriptor)
        answer = _answer(Path(path), descriptor, opened)
    except OSError as error:  # not kept: the disk may answer next time
        return excerpt(f"cannot read the GGUF file {path!r}: {error.strerror}; check the disk and the file")
    finally:
        os.close(descriptor)
    if time.time_ns() - opened.st_mtime_ns > _SETTLED_NS:
        with _answers_lock:
            _answers[(path, opened.st_size, opened.st_mtime_ns, opened.st_ino)] = answer
            while len(_answers) > _CACHED_FILES:
                _answers.popitem(last=False)
    return answer


def _answer(path: Path, descriptor: int, opened: os.stat_result) -> GgufInfo | str:
    try:
        facts = read_header(descriptor, opened.st_size)
    except NotGguf as why:
        return excerpt(f"{str(path)!r} is not a readable GGUF file: {why}; {_ADVICE}")
    return _info(path, opened.st_size, opened.st_mtime_ns, facts)


def _info(path: Path, size: int, modified_ns: int, facts: HeaderFacts) -> GgufInfo:
    """The model the header describes, with llama.cpp's defaults for fields a file leaves out."""
    head_count = facts.head_count if facts.head_count is not None else 1
    embedding = facts.embedding_length or 0
    return GgufInfo(
        path=path, size=size, modified_ns=modified_ns, architecture=facts.architecture or "llama",
        block_count=facts.block_count or 0, head_count=head_count,
        head_count_kv=facts.head_count_kv if facts.head_count_kv is not None else head_count,
        embedding_length=embedding,
        head_dim=facts.key_length or (embedding // head_count if head_count else 0),
        context_length=facts.context_length or DEFAULT_CONTEXT, vocab_size=facts.vocab_size or facts.tokens,
        tensor_bytes=facts.tensor_bytes, parameters=facts.parameters, sampling=facts.sampling, kind=facts.kind or "model",
        adapter_type=facts.adapter_type, weights_type=facts.weights_type or "unknown")


def read_gguf_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's name and dimensions (ggml order: the row length first), from the header; read each time.

    For checking a LoRA adapter against its base at registration; the same
    bounded reader as :func:`read_gguf`, the same one-line :class:`ModelLoadingError`.
    """
    try:
        descriptor = open_regular(path)
    except OSError as error:
        raise ModelLoadingError(excerpt(f"cannot read the GGUF file {str(path)!r}: {error.strerror}; "
                                        "check the path")) from None
    except NotGguf as why:
        raise ModelLoadingError(excerpt(f"{str(path)!r} is not a readable GGUF file: {why}")) from None
    try:
        facts = read_header(descriptor, os.fstat(descriptor).st_size, shapes=True)
    except NotGguf as why:
        raise ModelLoadingError(excerpt(f"{str(path)!r} is not a readable GGUF file: {why}; {_ADVICE}")) from None
    except OSError as error:
        raise ModelLoadingError(excerpt(f"cannot read the GGUF file {str(path)!r}: {error.strerror}")) from None
    finally:
        os.close(descriptor)
    return dict(facts.shapes)


#: ggml's f16, llama.cpp's KV cache type unless ``type_k``/``type_v`` say otherwise.
F16 = 1
#: The KV cache types llama.cpp's server accepts (``--cache-type-k``), in its order; name -> ggml value.
CACHE_TYPES = {"f32": 0, "f16": F16, "bf16": 30, "q8_0": 8, "q4_0": 2, "q4_1": 3, "iq4_nl": 20, "q5_0": 6, "q5_1": 7}


def cache_type_label(value: object) -> str:
    """``q8_0`` for ``"Q8_0 "`` or 8: a KV cache type's name as given in ``load_kwargs``; ``f16`` when unset or
    not known here (a secret, read at load)."""
    if isinstance(value, str) and value.strip().lower() in CACHE_TYPES:
        return value.strip().lower()
    if isinstance(value, int) and not isinstance(value, bool):
        return next((name for name, known in CACHE_TYPES.items() if known == value), "f16")
    return "f16"


def kv_cache_bytes(info: GgufInfo, n_ctx: int, key_type: int = F16, value_type: int = F16) -> int:
    """Keys and values for ``n_ctx`` tokens: per layer and token, a row of kv heads × head size values of each type.

    ``key_type``/``value_type`` are ggml types (f16 unless set): a quantized
    cache (``q8_0``: 34 bytes per 32 values) takes whole blocks, as llama.cpp
    allocates it.
    """
    values = info.head_count_kv * info.head_dim
    return info.block_count * n_ctx * (row_bytes(key_type, values) + row_bytes(value_type, values))


def compute_buffer_bytes(info: GgufInfo, n_ctx: int, *, embed: bool = False) -> int:
    """llama.cpp's scratch memory for one forward pass: an estimate (metadata cannot say exactly).

    The buffer is sized for the graph's peak, which is either the logits of
    a micro-batch (512 tokens × vocabulary, float32) or, at long contexts,
    the attention scores (context × micro-batch × heads, float32) with the
    keys and values they read. In embed mode the sequences of a batch share
    one KV cache, and the logits peak also holds their attention mask
    (context × micro-batch, float32). Measured on SmolLM2-135M it is within
    1.1% at every context from 512 to 8192 tokens, in both modes; the
    measured figure replaces it once the model is loaded.
    """
    ubatch = min(_UBATCH, n_ctx)
    logits = ubatch * (info.vocab_size + 3 * info.embedding_length) * 4 + (n_ctx * ubatch * 4 if embed else 0)
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
