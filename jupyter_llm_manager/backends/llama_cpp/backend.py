"""The ``llama_cpp`` backend: GGUF files run by llama.cpp (``llama-cpp-python``, the ``llamacpp`` extra).

A model loads in a fraction of a second (the file is memory-mapped) and
runs quantized, so it needs a fraction of the memory transformers needs for
the same file. Its memory is what llama.cpp allocates: the weights (the
file's tensor bytes), the KV cache for ``n_ctx`` tokens and a compute
buffer. The first two follow from the file's header; the third is
estimated before loading and measured from llama.cpp's log after. llama.cpp's
log goes to this module's logger (debug), never to the notebook. A GGUF LoRA
adapter is applied at load (see :mod:`.adapters`): an adapter id is
an instance of its own, its base's file with the adapter, counted as both.
"""

from __future__ import annotations

import importlib.util
import inspect
import logging
import threading
import time
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from ...config.spec import ModelSpec
from ...devices import trim_c_heap
from ...errors import ConfigurationError, GenerationError, InvalidGenerationParameters, ModelLoadingError
from ...estimates import lesson
from ...generation import AnswerFilter, FinishReason, GenerationParams, GenerationResult, Prompt, StreamInterrupted
from ...gguf.files import (
    AUTO_CONTEXT_FLOOR,
    AUTO_CONTEXT_STEP,
    GgufInfo,
    compute_buffer_bytes,
    context_for,
    gguf_path,
    is_gguf,
    read_gguf,
)
from ...reports import MemoryEstimate
from ...support.interrupts import NativeCallbacks
from ...support.units import excerpt, format_bytes
from ..base import Backend, ContextGrowth, LoadedModel, Placement, TextGenerator
from ..generation_defaults import LOCAL_DEFAULTS, GenerationDefaults, gguf_defaults
from . import adapters as lora
from . import closed
from .estimate import adapter_bytes, corrected_estimate, estimate_at, kv_bytes, kv_types, output_bytes
from .log import captured_log, footprint_of, reported_buffers, route_log
from .options import ThreadChoice, normalized, usable_cores
from .prompt_cache import CHUNK, ChatMarks, PromptCache, chat_marks, completion
from .validation import native_options

__all__ = ["LlamaCppBackend", "MeasuredBuffer", "usable_cores"]

log = logging.getLogger(__name__)

_INSTALL = ('pip install --no-cache-dir "jupyter-llm-manager[llamacpp]" (build it with '
            'CMAKE_ARGS="-DGGML_NATIVE=OFF" where the default build crashes)')
_TEMPLATE_TOKENS = 6  # what a chat template adds around each message (role markers), about
_construct_lock = threading.Lock()  # llama-cpp-python swaps sys.stdout/stderr while it builds a model


#: Keywords of llama-cpp-python's completion calls that this backend sets itself.
_SET_HERE = frozenset({"self", "messages", "prompt", "stream", "model"})


class LlamaCppBackend(Backend):
    """Runs GGUF files with llama.cpp, in chat or embed mode."""

    name = "llama_cpp"
    modes = frozenset({"chat", "embed"})
    serial = True  # a Llama object is not thread-safe: two requests at once crash the process
    context_at_load = True
    frees_on_unload = True  # Llama.close() frees the native memory, whatever references the object
    adapters = "own"  # llama-cpp-python applies a LoRA at load: an adapter is the base's file loaded with it
    check_adapter = staticmethod(lora.check)

    def normalize(self, spec: ModelSpec) -> ModelSpec:
        """``load_kwargs.n_ctx`` becomes ``max_context``; options the manager owns are refused."""
        return normalized(spec)

    def validate(self, spec: ModelSpec) -> None:
        normalized(spec)
        if not is_gguf(spec):
            raise ConfigurationError(f"{spec.id!r}: the llama_cpp backend runs .gguf files (or files that start "
                                     "with GGUF); give source: a .gguf file, or a folder or Hub repo with "
                                     "gguf_file: NAME.gguf",
                                     model_id=spec.id, key="source")
        if spec.quantization:
            raise ConfigurationError(f"{spec.id!r}: a GGUF file is quantized already; remove quantization",
                                     model_id=spec.id, key="quantization")
        if spec.dtype != "auto":
            raise ConfigurationError(f"{spec.id!r}: llama.cpp runs the file's own types; remove dtype",
                                     model_id=spec.id, key="dtype")

    def problem(self, spec: ModelSpec) -> str | None:
        if importlib.util.find_spec("llama_cpp") is None:
            return f"llama-cpp-python is not installed: {_INSTALL}"
        return None

    def extra_params(self, spec: ModelSpec) -> frozenset[str] | None:
        """The keywords both of llama-cpp-python's completion calls take (``None`` where it is not installed)."""
        if importlib.util.find_spec("llama_cpp") is None:
            return None
        llama = _library().Llama
        chat, plain = (set(inspect.signature(call).parameters)
                       for call in (llama.create_chat_completion, llama.create_completion))
        return frozenset((chat & plain) - _SET_HERE)

    def device_kinds(self) -> set[str]:
        llama_cpp = _library()
        return {"cpu", "cuda"} if llama_cpp.llama_supports_gpu_offload() else {"cpu"}

    # -- memory before loading ---------------------------------------------------------------------

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        info = read_gguf(_file_of(spec))
        return estimate_at(spec, info, context_for(spec, info), adapter_bytes(spec))

    def generation_defaults(self, spec: ModelSpec) -> GenerationDefaults:
        """The file's ``general.sampling.*`` settings, then the default penalty (its window: llama.cpp's
        ``last_n_tokens_size``)."""
        path = gguf_path(spec)
        return gguf_defaults(read_gguf(path)) if path is not None else LOCAL_DEFAULTS

    def lent_context(self, spec: ModelSpec) -> int:
        """``max_context``, or the context it would load with by default (``auto``: any copy will do)."""
        if spec.max_context == "auto":
            return 0
        if isinstance(spec.max_context, int):
            return spec.max_context
        return context_for(spec, read_gguf(_file_of(spec)))

    def context_growth(self, spec: ModelSpec) -> ContextGrowth | None:
        """Contexts from the floor up to the trained one (at most the model's ``max_context_auto_limit``), in
        steps of 256 tokens."""
        if spec.max_context != "auto":
            return None
        info = read_gguf(_file_of(spec))
        return ContextGrowth(AUTO_CONTEXT_FLOOR, AUTO_CONTEXT_STEP, info.context_length,
                             partial(corrected_estimate, spec, info, adapter_bytes(spec), lesson(spec))).capped(
                                 spec.max_context_auto_limit)

    # -- loading -----------------------------------------------------------------------------------

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        """Open the file with llama.cpp on ``placement``; the footprint is what llama.cpp says it allocated."""
        llama_cpp = _library()
        path = _file_of(spec)
        info = read_gguf(path)
        context = placement.context or context_for(spec, info)
        generation = gguf_defaults(info)
        # the sampler starts looking now: the first request reads the CPUs over this load, without waiting
        chooser = None if "n_threads" in spec.load_kwargs else ThreadChoice().hold()
        threads = chooser.choose() if chooser is not None else usable_cores()
        options: dict[str, Any] = {"model_path": str(path), "n_ctx": context, "n_threads": threads,
                                   "n_threads_batch": threads, "verbose": False,
                                   "last_n_tokens_size": min(generation.window or context, context)}
        if spec.mode == "embed":
            options.update(embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN)
        if spec.adapter is not None:  # the base's file with the adapter applied, checked again against it now
            options["lora_path"] = str(_adapter_now(spec, path))
        gpus = [d for d in placement.devices if d.startswith("cuda")]
        if gpus:
            options.update(n_gpu_layers=-1, main_gpu=int(gpus[0].partition(":")[2] or 0))
        options.update(native_options(spec, spec.load_kwargs, info))
        threads = int(options["n_threads"])
        with _construct_lock, captured_log() as lines:
            try:
                model = llama_cpp.Llama(**options)
            except (ValueError, RuntimeError, TypeError, OSError) as error:
                if chooser is not None:
                    chooser.close()
                said = [line for line in lines if "error" in line.lower() or "failed" in line.lower()][-3:]
                raise ModelLoadingError(excerpt(f"llama.cpp could not load {spec.id!r} from {str(path)!r}: {error}"
                                                + (f" ({'; '.join(said)})" if said else "")),
                                        model_id=spec.id) from None
        buffers = reported_buffers(lines)
        footprint = footprint_of(buffers) or {(gpus[0] if gpus else "cpu"): estimate_at(
            spec, info, context, adapter_bytes(spec)).total_bytes}
        if chooser is not None:
            _choosers[model] = chooser
            chooser.finished()
        closed.remember(model, spec.id)
        if spec.mode == "chat":  # offloaded, a batch of one is far slower than a batch: answers in chunks too
            _caches[model] = PromptCache(model, chunk=CHUNK if not gpus else int(model.n_batch), singles=not gpus)
        details = _details(spec, info, context, threads, buffers)
        if spec.adapter is not None:
            details.update(lora.own_copy(spec))
        return LoadedModel(model=model, footprint=footprint, context_length=context, complete_footprint=True,
                           details=details, generation=generation)

    def unload(self, loaded: LoadedModel) -> None:
        """``close()`` frees llama.cpp's model and context now, not when the object is collected; a reference kept
        by the user then raises when used (:mod:`.closed`)."""
        model, loaded.model = loaded.model, None
        if model is not None:
            chooser = _choosers.pop(model, None)
            if chooser is not None:
                chooser.close()
            closed.retire(model)

    def release_memory(self, devices: tuple[str, ...]) -> None:
        if "cpu" in devices:
            trim_c_heap()

    # -- use ---------------------------------------------------------------------------------------

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        model = loaded.model
        params = loaded.generation.apply(params)
        prepared = _prepare(model, prompt, raw)
        max_new, warnings = _token_budget(prepared, params, loaded.context_length, model_id)
        options = _sampling(params, max_new)
        chooser = _choosers.get(model)
        if chooser is not None:
            loaded.details["threads"] = _use_threads(model, chooser.choose())
        try:
            chunks = _completion(model, prepared, options)
        except (ValueError, TypeError, RuntimeError) as error:
            if chooser is not None:
                chooser.finished()
            raise GenerationError(f"{model_id!r} failed to generate: {error}", model_id=model_id) from error
        text_filter = AnswerFilter(params.stop, repetition=params.stops_on_repetition)
        started = time.perf_counter()
        prompt_tokens: int | None = None
        finish, pieces, interrupted = None, 0, False
        try:
            for chunk in _pieces(chunks, model_id):
                if prompt_tokens is None:
                    prompt_tokens = model.n_tokens  # the prompt is evaluated when the first piece comes
                text, finish = chunk
                if text:
                    pieces += 1
                    shown = text_filter.feed(text)
                    if shown:
                        yield shown
                if text_filter.stopped or stop.is_set():
                    break
        except KeyboardInterrupt:
            interrupted = True
        finally:
            chunks.close()
            if chooser is not None:
                chooser.finished()
        rest = "" if interrupted else text_filter.flush()
        if rest:
            yield rest
        evaluated = model.n_tokens - (prompt_tokens or model.n_tokens)
        tokens = max(pieces, evaluated + (0 if finish == "stop" else 1)) if pieces else 0
        reason: FinishReason = text_filter.reason or (
            "interrupted" if interrupted or stop.is_set() else "length" if finish == "length" else "stop")
        result = GenerationResult(model_id, text_filter.text, prompt_tokens or 0, tokens,
                                  time.perf_counter() - started, reason, warnings, max_new,
                                  context_limited=max_new < params.max_new_tokens)
        if interrupted:
            raise StreamInterrupted(result)
        return result

    def embed(self, loaded: LoadedModel, texts: Sequence[str], *, model_id: str) -> list[list[float]]:
        """Unit-length vectors, mean-pooled over each text's tokens by llama.cpp."""
        try:
            vectors = loaded.model.embed(list(texts), normalize=True)
        except (ValueError, RuntimeError) as error:
            raise GenerationError(f"{model_id!r} failed to embed: {error}", model_id=model_id) from error
        return [[float(x) for x in vector] for vector in vectors]


def _library() -> Any:
    try:
        import llama_cpp
    except ImportError as error:
        raise ModelLoadingError(f"the llama_cpp backend needs llama-cpp-python ({error}): {_INSTALL}") from None
    route_log(llama_cpp)
    return llama_cpp


def _file_of(spec: ModelSpec) -> Path:
    path = gguf_path(spec)
    if path is None:
        raise ModelLoadingError(f"the GGUF file of {spec.id!r} is not on this machine: download it first "
                                f"(huggingface-cli download {spec.source} {spec.gguf_file})", model_id=spec.id)
    return path


def _adapter_now(spec: ModelSpec, base_path: Path) -> Path:
    """The adapter's file as it is now, checked against the base's file (it may have been replaced since
    registration: llama.cpp would crash on a file that does not fit)."""
    try:
        return lora.check_on(spec, base_path, spec.base or "its base")
    except ConfigurationError as error:
        raise ModelLoadingError(f"{error} (checked again at load: the file changed since registration?)",
                                model_id=spec.id) from None


# -- what status shows ------------------------------------------------------------------------------

@dataclass(frozen=True)
class MeasuredBuffer:
    """One llama.cpp buffer: what it allocated, beside what the header predicted (shown as both)."""

    bytes: int
    estimated: int

    def __str__(self) -> str:
        return f"{format_bytes(self.bytes)} (estimated {format_bytes(self.estimated)})"


def _details(spec: ModelSpec, info: GgufInfo, context: int, threads: int,
             buffers: Sequence[tuple[str, str, int]]) -> dict[str, Any]:
    """What status shows: the context, the threads, and each buffer measured next to its estimate."""
    measured: dict[str, int] = {}
    for _, part, size in buffers:
        measured[part] = measured.get(part, 0) + size
    estimated = {"model": info.tensor_bytes, "KV": kv_bytes(spec, info, context),
                 "compute": compute_buffer_bytes(info, context, embed=spec.mode == "embed"),
                 "output": output_bytes(spec, info), "LoRA": adapter_bytes(spec) or 0}
    details: dict[str, Any] = {"n_ctx": context, "threads": threads, "mode": spec.mode}
    if spec.max_context == "auto":  # the context chosen, and what it costs
        ceiling = f", at most {spec.max_context_auto_limit:,}" if spec.max_context_auto_limit else ""
        details["context"] = (f"{context:,} tokens (max_context: auto{ceiling}): KV cache "
                              f"{format_bytes(estimated['KV'])} ({kv_types(spec)})")
    for part, guess in estimated.items():
        if part in measured:
            details[f"{part} buffer"] = MeasuredBuffer(measured[part], guess)
    return details


# -- generation ------------------------------------------------------------------------------------

def _has_template(model: Any) -> bool:
    return bool(model.metadata.get("tokenizer.chat_template")) or model.chat_format not in (None, "llama-2")


@dataclass(frozen=True)
class _Prepared:
    """A prompt as llama.cpp will evaluate it: its tokens (with the chat template applied), or its messages."""

    tokens: list[int] | None  # exact; None: llama-cpp-python's own chat format renders the messages
    messages: list[dict[str, str]]
    stop: list[str]
    count: int  # the tokens evaluated (exact with ``tokens``, within a few tokens without)
    exact: bool


_formatters: weakref.WeakKeyDictionary[Any, Any] = weakref.WeakKeyDictionary()
_choosers: weakref.WeakKeyDictionary[Any, ThreadChoice] = weakref.WeakKeyDictionary()  # models without n_threads
_caches: weakref.WeakKeyDictionary[Any, PromptCache] = weakref.WeakKeyDictionary()  # chat models


def _use_threads(model: Any, threads: int) -> int:
    """Run ``model``'s next request on ``threads`` threads (prompt and answer alike)."""
    import llama_cpp

    llama_cpp.llama_set_n_threads(model.ctx, threads, threads)
    return threads


def _completion(model: Any, prepared: _Prepared, options: dict[str, Any]) -> Any:
    """The completion's chunks. The prompt reuses what the model's cache holds of it, evaluated as a fresh
    model would (see :mod:`.prompt_cache`): an answer never depends on the request before it."""
    cache = _caches.get(model)
    if prepared.tokens is not None and cache is not None:  # exactly the tokens counted: the template applied here
        if cache.marks is None:
            formatter = _formatter(model)
            cache.marks = chat_marks(model, formatter) if formatter is not None else ChatMarks()
        return completion(model, cache, prepared.tokens, prepared.stop, options)
    model.reset()  # the library renders the messages: the prompt is evaluated whole
    if cache is not None:
        cache.forget()
    if prepared.tokens is not None:
        return model.create_completion(prepared.tokens, stream=True, stop=prepared.stop or None, **options)
    return model.create_chat_completion(prepared.messages, stream=True, **options)


def _prepare(model: Any, prompt: Prompt, raw: bool) -> _Prepared:
    """Apply the model's chat template (the file's), so the prompt is counted as it runs."""
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else [dict(m) for m in prompt]
    if raw or (isinstance(prompt, str) and not _has_template(model)):
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        tokens = model.tokenize(text.encode("utf-8"), add_bos=True, special=True)
        return _Prepared(tokens, messages, [], len(tokens), True)
    formatter = _formatter(model)
    if formatter is None:  # no template in the file: the library's named format, counted with a margin
        text = "\n".join(m["content"] for m in messages)
        count = len(model.tokenize(text.encode("utf-8"), add_bos=True, special=True))
        return _Prepared(None, messages, [], count + _TEMPLATE_TOKENS * (len(messages) + 1), False)
    rendered = formatter(messages=messages)
    tokens = model.tokenize(rendered.prompt.encode("utf-8"), add_bos=not rendered.added_special, special=True)
    stop = rendered.stop if isinstance(rendered.stop, list) else [rendered.stop] if rendered.stop else []
    return _Prepared(tokens, messages, stop, len(tokens), True)


def _formatter(model: Any) -> Any:
    """The file's chat template as llama-cpp-python renders it (its eos and bos tokens), made once per model."""
    template = model.metadata.get("tokenizer.chat_template")
    if not template:
        return None
    found = _formatters.get(model)
    if found is None:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        def text(token: int) -> str:  # the token's own text, special tokens included, as llama-cpp-python uses
            return model.detokenize([token], special=True).decode("utf-8", "replace") if token != -1 else ""

        found = Jinja2ChatFormatter(template=template, eos_token=text(model.token_eos()),
                                    bos_token=text(model.token_bos()), stop_token_ids=[model.token_eos()])
        _formatters[model] = found
    return found


def _token_budget(prepared: _Prepared, params: GenerationParams, context: int | None,
                  model_id: str) -> tuple[int, tuple[str, ...]]:
    """The context rule (see README): refuse a prompt that fills the context, lower ``max_new_tokens`` to fit.

    The prompt is counted after the model's chat template is applied (a
    default system prompt included), as llama.cpp evaluates it.
    """
    max_new = params.max_new_tokens
    if not context:
        return max_new, ()
    tokens, about = prepared.count, "" if prepared.exact else "about "
    if tokens >= context:
        raise InvalidGenerationParameters(f"the prompt has {about}{tokens} tokens with its chat template, but "
                                          f"{model_id!r} accepts {context} (its n_ctx): shorten the prompt",
                                          model_id=model_id)
    if tokens + max_new > context:
        max_new = context - tokens
        return max_new, ((f"max_new_tokens lowered from {params.max_new_tokens} to {max_new}: the prompt ({about}"
                         f"{tokens} tokens) and the answer must fit the context of {context}"),)
    return max_new, ()


def _sampling(params: GenerationParams, max_new: int) -> dict[str, Any]:
    """llama-cpp-python's options for our generation parameters (greedy: temperature 0)."""
    options: dict[str, Any] = {"max_tokens": max_new}
    if params.sampling is False:
        options["temperature"] = 0.0
    else:
        for ours, theirs in (("temperature", "temperature"), ("top_p", "top_p"), ("top_k", "top_k")):
            value = getattr(params, ours)
            if value is not None:
                options[theirs] = value
    if params.repetition_penalty is not None:
        options["repeat_penalty"] = params.repetition_penalty
    if params.seed is not None:
        options["seed"] = params.seed
    options.update(params.extra)
    return options


def _pieces(chunks: Iterator[dict[str, Any]], model_id: str) -> Iterator[tuple[str, str | None]]:
    """``(text, finish_reason)`` per chunk of a chat or plain completion stream.

    Each step runs under :class:`NativeCallbacks`: llama.cpp's sampler calls a ``logit_bias`` or
    ``logits_processor`` back in Python, and a Ctrl-C that lands there must stop the answer, not vanish."""
    try:
        while True:
            with NativeCallbacks():
                chunk = next(chunks, None)
            if chunk is None:
                return
            choice = chunk["choices"][0]
            text = choice.get("text") if "text" in choice else choice.get("delta", {}).get("content")
            yield text or "", choice.get("finish_reason")
    except (ValueError, TypeError, RuntimeError) as error:
        raise GenerationError(f"{model_id!r} failed to generate: {error}", model_id=model_id) from error
