"""The ``transformers`` backend: a tokenizer and a causal LM in this kernel.

torch and transformers are imported when a model is first estimated or
loaded, not when this package is imported. Streaming runs ``generate`` in a
worker thread fed through a queue; a stop event ends it within one token, so
an interrupt leaves the model loaded and usable.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import itertools
import logging
import queue
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import GenerationError, InvalidGenerationParameters, ModelLoadingError, OutOfMemoryDuringLoad
from ..estimate import MemoryEstimate, estimate_checkpoint
from ..generation import (
    FinishReason,
    GenerationParams,
    GenerationResult,
    Prompt,
    StopTextFilter,
    StreamInterrupted,
    cut_at_stop,
)
from ..imports import heavy
from ..secret import Secret
from ..spec import ModelSpec
from .base import Backend, LoadedModel, Placement, TextGenerator, release_frames

__all__ = ["TransformersBackend"]

log = logging.getLogger(__name__)

_WEIGHT_PATTERNS = ("*.safetensors", "*.bin", "*.pt", "*.pth", "*.gguf")
_DONE = object()
_JOIN_TIMEOUT_S = 30.0


def _torch() -> Any:
    return heavy("torch")


def _transformers() -> Any:
    return heavy("transformers")


class TransformersBackend(Backend):
    """Loads Hugging Face causal language models with ``transformers``."""

    name = "transformers"

    def device_kinds(self) -> set[str]:
        return set(_device_kinds())

    def estimate(self, spec: ModelSpec) -> MemoryEstimate:
        return estimate_checkpoint(spec)

    # -- loading ---------------------------------------------------------------

    def load(self, spec: ModelSpec, placement: Placement) -> LoadedModel:
        """Load tokenizer and model onto ``placement``; measure what they took."""
        torch = _torch()
        self._check_environment(spec, placement)
        source = str(spec.local_path) if spec.local_path else spec.source or ""
        if spec.local_path:
            _check_local_folder(spec)
        if spec.trust_remote_code:
            log.warning("model %r runs code from its repository (trust_remote_code=True)", spec.id)
        common = {"revision": spec.revision, "trust_remote_code": spec.trust_remote_code,
                  "token": spec.token.resolve() if spec.token else None}
        before = self.memory_in_use(placement.devices)
        try:
            transformers = _transformers()
            with library_progress_off():
                tokenizer = transformers.AutoTokenizer.from_pretrained(spec.tokenizer or source, **common)
                model = transformers.AutoModelForCausalLM.from_pretrained(
                    source, dtype=_torch_dtype(spec.dtype), **self._placement_kwargs(spec, placement),
                    **common, **_resolved(spec.load_kwargs))
        except (torch.OutOfMemoryError, MemoryError) as error:
            release_frames(error)
            raise OutOfMemoryDuringLoad(f"out of memory while loading {spec.id!r} on "
                                        f"{', '.join(placement.devices)}: {error}".strip(),
                                        model_id=spec.id, devices=placement.devices) from None
        except Exception as error:
            release_frames(error)
            raise ModelLoadingError(f"could not load {spec.id!r} from {source!r}: {error}",
                                    model_id=spec.id) from error
        if model.training:  # from_pretrained returns eval mode; eval() walks every module (0.25 ms here)
            model.eval()
        footprint = self._footprint(model, placement.devices, before)
        context = spec.max_context or _context_length(model)
        return LoadedModel(model=model, tokenizer=tokenizer, footprint=footprint, context_length=context,
                           details={"dtype": str(model.dtype).removeprefix("torch.")})

    def _check_environment(self, spec: ModelSpec, placement: Placement) -> None:
        torch = _torch()
        wants_cuda = any(d.startswith("cuda") for d in placement.devices)
        if wants_cuda and not torch.cuda.is_available():
            raise ModelLoadingError(f"{spec.id!r} is placed on {', '.join(placement.devices)} but torch sees no "
                                    "CUDA GPU (CPU-only build or no driver); use device='cpu' or 'auto'",
                                    model_id=spec.id)
        if spec.quantization:
            import importlib.util

            if importlib.util.find_spec("bitsandbytes") is None:
                raise ModelLoadingError(f"{spec.id!r} asks for {spec.quantization} quantization, which needs "
                                        "bitsandbytes: pip install bitsandbytes", model_id=spec.id)
            if not wants_cuda:
                raise ModelLoadingError(f"{spec.id!r} asks for {spec.quantization} quantization, which needs a "
                                        "CUDA GPU; remove quantization to load it on the CPU", model_id=spec.id)

    def _placement_kwargs(self, spec: ModelSpec, placement: Placement) -> dict[str, Any]:
        kwargs: dict[str, Any] = {}
        target = placement.target or placement.devices[0]
        if len(placement.devices) > 1:
            kwargs["device_map"] = "auto"
            kwargs["max_memory"] = {int(d.split(":")[1]): size for d, size in (placement.max_memory or {}).items()}
        elif target != "cpu":
            kwargs["device_map"] = {"": target}
        if spec.quantization:
            BitsAndBytesConfig = _transformers().BitsAndBytesConfig
            compute = _torch_dtype(spec.dtype)
            kwargs["quantization_config"] = (
                BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                   bnb_4bit_compute_dtype=_torch().bfloat16 if compute == "auto" else compute)
                if spec.quantization == "4bit" else BitsAndBytesConfig(load_in_8bit=True))
        return kwargs

    def _footprint(self, model: Any, devices: tuple[str, ...], before: dict[str, int]) -> dict[str, int]:
        """CUDA allocated delta per GPU; parameter and buffer bytes elsewhere (tied weights once)."""
        by_device: dict[Any, int] = {}
        seen: set[int] = set()
        for tensor in itertools.chain(model.parameters(), model.buffers()):
            if tensor.data_ptr() in seen:
                continue
            seen.add(tensor.data_ptr())
            by_device[tensor.device] = by_device.get(tensor.device, 0) + tensor.nbytes
        footprint: dict[str, int] = {}
        for device, size in by_device.items():
            name = "cpu" if device.type in ("cpu", "mps") else str(device)
            footprint[name] = footprint.get(name, 0) + size
        after = self.memory_in_use(devices)
        for device in after:
            footprint[device] = max(after[device] - before.get(device, 0), 0) or footprint.get(device, 0)
        return footprint

    # -- memory ------------------------------------------------------------------

    def memory_in_use(self, devices: tuple[str, ...]) -> dict[str, int]:
        torch = _torch()
        if not torch.cuda.is_initialized():
            return {}
        return {d: int(torch.cuda.memory_allocated(torch.device(d))) for d in devices if d.startswith("cuda")}

    def release_memory(self, devices: tuple[str, ...]) -> None:
        """``synchronize`` + ``empty_cache`` on each CUDA device; trim the C heap for CPU RAM."""
        torch = _torch()
        if torch.cuda.is_initialized():
            for device in (d for d in devices if d.startswith("cuda")):
                with torch.cuda.device(torch.device(device)):
                    torch.cuda.synchronize()
                    torch.cuda.empty_cache()
        if "cpu" in devices:
            _malloc_trim()

    # -- generation ----------------------------------------------------------------

    def generate(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
                 model_id: str, raw: bool) -> GenerationResult:
        torch = _torch()
        inputs, max_new, warnings = self._prepare(loaded, prompt, params, model_id, raw)
        kwargs = self._generate_kwargs(loaded, params, max_new)
        if params.stop:
            kwargs.update(stop_strings=list(params.stop), tokenizer=loaded.tokenizer)
        prompt_tokens = inputs["input_ids"].shape[-1]
        started = time.perf_counter()
        try:
            with torch.inference_mode(), _seeded(params.seed, loaded.model):
                output = loaded.model.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError as error:
            release_frames(error)  # the activations of the failed step
            raise _out_of_memory(model_id) from None
        except (ValueError, TypeError, RuntimeError) as error:
            release_frames(error)
            raise GenerationError(f"{model_id!r} failed to generate: {error}", model_id=model_id) from error
        seconds = time.perf_counter() - started
        tokens = output[0, prompt_tokens:]
        text, stopped = cut_at_stop(loaded.tokenizer.decode(tokens, skip_special_tokens=True), params.stop)
        return GenerationResult(model_id, text, prompt_tokens, int(tokens.shape[-1]), seconds,
                                _finish_reason(stopped, int(tokens.shape[-1]), max_new), warnings)

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        torch = _torch()
        inputs, max_new, warnings = self._prepare(loaded, prompt, params, model_id, raw)
        pieces: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}
        kwargs = self._generate_kwargs(loaded, params, max_new)
        kwargs["streamer"] = _streamer_class()(loaded.tokenizer, pieces)
        kwargs["stopping_criteria"] = _stop_criteria(stop)
        prompt_tokens = inputs["input_ids"].shape[-1]

        def work() -> None:
            try:
                with torch.inference_mode(), _seeded(params.seed, loaded.model):
                    output = loaded.model.generate(**inputs, **kwargs)
                outcome["tokens"] = int(output.shape[-1] - prompt_tokens)
            except BaseException as error:  # noqa: BLE001 - handed to the consuming thread, which raises it
                outcome["error"] = error
            finally:
                pieces.put(_DONE)

        worker = threading.Thread(target=work, name=f"llm-generate-{model_id}", daemon=True)
        started = time.perf_counter()
        worker.start()
        text_filter = StopTextFilter(params.stop)
        interrupted = False
        try:
            try:
                for piece in _drain(pieces):
                    shown = text_filter.feed(piece)
                    if text_filter.stopped:
                        stop.set()
                    if shown:
                        yield shown
            except KeyboardInterrupt:  # Ctrl-C while waiting for a piece: stop, then say what was made
                interrupted = True
            rest = "" if interrupted else text_filter.flush()
            if rest:
                yield rest
        finally:
            if not outcome:  # the consumer left early (interrupt, close): end the worker
                stop.set()
            worker.join(_JOIN_TIMEOUT_S)
        result = self._stream_result(outcome, model_id, prompt_tokens, max_new, started, text_filter,
                                     stop, warnings)
        if interrupted:
            raise StreamInterrupted(result)
        return result

    def _stream_result(self, outcome: dict[str, Any], model_id: str, prompt_tokens: int, max_new: int,
                       started: float, text_filter: StopTextFilter, stop: threading.Event,
                       warnings: tuple[str, ...]) -> GenerationResult:
        error = outcome.pop("error", None)
        if error is not None:
            release_frames(error)
            if type(error).__name__ == "OutOfMemoryError":
                raise _out_of_memory(model_id) from None
            raise GenerationError(f"{model_id!r} failed to generate: {error}", model_id=model_id) from error
        tokens = outcome.get("tokens", 0)
        reason = _finish_reason(text_filter.stopped, tokens, max_new)
        if stop.is_set() and not text_filter.stopped and tokens < max_new:
            reason = "interrupted"
        return GenerationResult(model_id, text_filter.text, prompt_tokens, tokens,
                                time.perf_counter() - started, reason, warnings)

    def _prepare(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, model_id: str,
                 raw: bool) -> tuple[dict[str, Any], int, tuple[str, ...]]:
        """Tokenize; apply the context rule (see README) to the token budget."""
        try:
            inputs = _encode(loaded.tokenizer, prompt, raw)
        except Exception as error:  # chat template errors (role order, unsupported roles)
            raise GenerationError(f"could not prepare the prompt for {model_id!r}: {error}",
                                  model_id=model_id) from error
        device = _input_device(loaded.model)
        inputs = {key: value.to(device) for key, value in inputs.items()}
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        max_new = params.max_new_tokens
        warnings: tuple[str, ...] = ()
        context = loaded.context_length
        if context:
            if prompt_tokens >= context:
                raise InvalidGenerationParameters(
                    f"the prompt has {prompt_tokens} tokens but {model_id!r} accepts {context} "
                    "(its context length): shorten the prompt", model_id=model_id)
            if prompt_tokens + max_new > context:
                max_new = context - prompt_tokens
                warnings = ((f"max_new_tokens lowered from {params.max_new_tokens} to {max_new}: the prompt "
                             f"({prompt_tokens} tokens) and the answer must fit the context of {context}"),)
        return inputs, max_new, warnings

    def _generate_kwargs(self, loaded: LoadedModel, params: GenerationParams, max_new: int) -> dict[str, Any]:
        tokenizer = loaded.tokenizer
        kwargs: dict[str, Any] = {"max_new_tokens": max_new}
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        if pad is not None:
            kwargs["pad_token_id"] = pad
        sampling = params.sampling
        if sampling is False:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            if sampling:
                kwargs["do_sample"] = True
            for name in ("temperature", "top_p", "top_k"):
                if getattr(params, name) is not None:
                    kwargs[name] = getattr(params, name)
        if params.repetition_penalty is not None:
            kwargs["repetition_penalty"] = params.repetition_penalty
        kwargs.update(params.extra)
        if kwargs.get("min_new_tokens", 0) > max_new:  # the context rule lowered the limit
            kwargs["min_new_tokens"] = max_new
        return kwargs


@functools.cache
def _device_kinds() -> frozenset[str]:
    """Device kinds torch can use in this process (GPUs do not come and go while it runs)."""
    torch = _torch()
    kinds = {"cpu"}
    if torch.cuda.is_available():
        kinds.add("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        kinds.add("mps")
    return frozenset(kinds)


def _torch_dtype(name: str) -> Any:
    return "auto" if name == "auto" else getattr(_torch(), name)


def _check_local_folder(spec: ModelSpec) -> None:
    folder = spec.local_path
    assert folder is not None
    if not folder.exists():
        raise ModelLoadingError(f"the folder {str(folder)!r} of {spec.id!r} does not exist", model_id=spec.id)
    if folder.is_dir():
        if not (folder / "config.json").exists():
            raise ModelLoadingError(f"{str(folder)!r} has no config.json: it is not a transformers checkpoint "
                                    f"folder (save one with model.save_pretrained)", model_id=spec.id)
        if not any(next(folder.glob(pattern), None) for pattern in _WEIGHT_PATTERNS):
            raise ModelLoadingError(f"{str(folder)!r} has no weight files (*.safetensors, *.bin): the "
                                    "checkpoint is incomplete", model_id=spec.id)


def _context_length(model: Any) -> int | None:
    config = getattr(model.config, "text_config", None) or model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _input_device(model: Any) -> Any:
    embeddings = model.get_input_embeddings()
    return embeddings.weight.device if embeddings is not None else model.device


def _encode(tokenizer: Any, prompt: Prompt, raw: bool) -> dict[str, Any]:
    """Token ids for a prompt: the chat template unless ``raw`` or the tokenizer has none."""
    if raw or not getattr(tokenizer, "chat_template", None):
        text = prompt if isinstance(prompt, str) else _plain_transcript(prompt)
        return dict(tokenizer(text, return_tensors="pt"))
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    return {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}


def _plain_transcript(messages: Any) -> str:
    """Messages as text, for tokenizers without a chat template."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


@contextmanager
def _seeded(seed: int | None, model: Any) -> Iterator[None]:
    """Seed torch for one generation without changing the caller's random state."""
    if seed is None:
        yield
        return
    torch = _torch()
    cuda = [d.index or 0 for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


_progress_lock = threading.Lock()
_progress_quieted = 0


@contextmanager
def library_progress_off() -> Iterator[None]:
    """transformers' and huggingface_hub's own progress bars off during a managed load.

    The manager shows one progress display of its own (the ``%%llm`` status
    line, the dashboard row); the libraries' bars would land under it and stay
    in the saved notebook. They are turned back on after the last load that
    turned them off, when they were on.
    """
    global _progress_quieted
    from huggingface_hub import utils as hub_utils

    logging_utils = _transformers().utils.logging
    with _progress_lock:
        if _progress_quieted == 0:
            _progress_state["transformers"] = logging_utils.is_progress_bar_enabled()
            _progress_state["hub"] = not hub_utils.are_progress_bars_disabled()
            logging_utils.disable_progress_bar()
            hub_utils.disable_progress_bars()
        _progress_quieted += 1
    try:
        yield
    finally:
        with _progress_lock:
            _progress_quieted -= 1
            if _progress_quieted == 0:
                with warnings.catch_warnings():  # the Hub's bars stay off where its variable says so
                    warnings.filterwarnings("ignore", message="Cannot enable progress bars")
                    if _progress_state.get("transformers"):
                        logging_utils.enable_progress_bar()
                    if _progress_state.get("hub"):
                        hub_utils.enable_progress_bars()


_progress_state: dict[str, bool] = {}


def _resolved(options: dict[str, Any]) -> dict[str, Any]:
    """Options with their secrets (a ``token`` in ``load_kwargs``) read now, when the model loads."""
    return {key: value.resolve() if isinstance(value, Secret) else value for key, value in options.items()}


def _finish_reason(stopped: bool, tokens: int, max_new: int) -> FinishReason:
    if stopped:
        return "stop_string"
    return "length" if tokens >= max_new else "stop"


def _out_of_memory(model_id: str) -> GenerationError:
    return GenerationError(f"{model_id!r} ran out of memory while generating; lower max_new_tokens or "
                           "shorten the prompt, or free memory (unload other models, %llm gc)", model_id=model_id)


def _drain(pieces: queue.Queue) -> Iterator[str]:
    """Pieces from the worker until it is done; waits in short slices so interrupts land."""
    while True:
        try:
            piece = pieces.get(timeout=0.1)
        except queue.Empty:
            continue
        if piece is _DONE:
            return
        yield piece


def _stop_criteria(stop: threading.Event) -> Any:
    return _transformers().StoppingCriteriaList([_stop_when_set_class()(stop)])


@functools.cache
def _stop_when_set_class() -> type:
    class StopWhenSet(_transformers().StoppingCriteria):  # type: ignore[misc]
        """Ends generation at the next token once the event is set (interrupt, stop string)."""

        def __init__(self, stop: threading.Event) -> None:
            self.stop = stop

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            torch = _torch()
            return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return StopWhenSet


@functools.cache
def _streamer_class() -> type:
    _transformers()
    from transformers.generation.streamers import BaseStreamer

    class QueueStreamer(BaseStreamer):
        """Incremental detokenizer feeding a queue: text appears as soon as it is whole.

        Unlike transformers' TextStreamer it does not wait for a space, so code
        and text without spaces stream too. It decodes a small window (the
        last emitted chunk as context, plus the new tokens) per step, so the
        cost stays linear in the answer length; a trailing replacement
        character (half a UTF-8 sequence) is held back until complete.
        """

        def __init__(self, tokenizer: Any, pieces: queue.Queue) -> None:
            self.tokenizer = tokenizer
            self.pieces = pieces
            self.tokens: list[int] = []
            self.prefix_offset = 0
            self.read_offset = 0
            self.prompt_seen = False

        def _decode(self, start: int, stop: int | None = None) -> str:
            return self.tokenizer.decode(self.tokens[start:stop], skip_special_tokens=True)

        def put(self, value: Any) -> None:
            if not self.prompt_seen:  # the first call carries the prompt
                self.prompt_seen = True
                return
            self.tokens.extend(value.reshape(-1).tolist())
            self._emit(final=False)

        def end(self) -> None:
            self._emit(final=True)

        def _emit(self, final: bool) -> None:
            before = self._decode(self.prefix_offset, self.read_offset)
            text = self._decode(self.prefix_offset)
            if len(text) > len(before) and (final or not text.endswith("\ufffd")):
                self.pieces.put(text[len(before):])
                self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)

    return QueueStreamer


def _malloc_trim() -> None:
    """Give freed C-heap pages back to the OS so process RSS drops after an unload (glibc)."""
    trim = _malloc_trim_function()
    if trim is not None:
        trim(0)


@functools.cache
def _malloc_trim_function() -> Any:
    """glibc's ``malloc_trim``, looked up once: ``find_library`` runs ldconfig (1.6 ms here)."""
    name = ctypes.util.find_library("c")
    if not name:
        return None
    try:
        return getattr(ctypes.CDLL(name), "malloc_trim", None)
    except OSError as error:
        log.debug("malloc_trim unavailable: %s", error)
        return None
