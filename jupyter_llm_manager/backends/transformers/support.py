"""What the transformers backend needs around a model: imports, dtypes, prompts, streaming pieces.

Split from :mod:`.hf` so the backend's own module holds the load and
generation flow. torch and transformers are imported through the import
guard (:func:`~jupyter_llm_manager.imports.heavy`) the first time they are
needed, never when this module is imported.
"""

from __future__ import annotations

import functools
import inspect
import logging
import queue
import sys
import threading
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from ...config.secrets import Secret
from ...errors import GenerationError
from ...generation import AnswerFilter, FinishReason, GenerationParams, Prompt
from ...support.heavy_imports import heavy
from .threads import TORCH_THREADS

__all__ = [
    "DONE",
    "AnswerSink",
    "context_length",
    "device_kinds",
    "drain",
    "encode",
    "finish_reason",
    "generate_keywords",
    "generate_options",
    "import_torch",
    "import_transformers",
    "input_device",
    "library_progress_off",
    "out_of_memory",
    "resolved",
    "seeded",
    "stop_criteria",
    "streamer_class",
    "torch_dtype",
]

log = logging.getLogger(__name__)

DONE = object()


def import_torch() -> Any:
    return _torch(fresh="torch" not in sys.modules)


def import_transformers() -> Any:
    fresh = "torch" not in sys.modules
    transformers = heavy("transformers")
    _torch(fresh)  # imported with transformers: its thread count is recorded as soon as it is seen
    return transformers


def _torch(fresh: bool) -> Any:
    """torch, its thread count recorded the first time (``fresh``: imported by this package just now)."""
    torch = heavy("torch")
    TORCH_THREADS.note(torch, fresh)
    return torch


#: Keywords of ``generate`` that the backend sets itself, or that are no generation parameter.
_SET_BY_THE_BACKEND = frozenset({"self", "inputs", "kwargs", "generation_config", "streamer", "transformers_version"})


@functools.cache
def generate_keywords() -> frozenset[str]:
    """What ``generate`` takes beside the prompt: the fields of a ``GenerationConfig`` and its own keywords."""
    transformers = import_transformers()
    names = set(transformers.GenerationConfig().to_dict())
    names |= set(inspect.signature(transformers.GenerationMixin.generate).parameters)
    return frozenset(name for name in names - _SET_BY_THE_BACKEND if not name.startswith("_"))


@functools.cache
def device_kinds() -> frozenset[str]:
    """Device kinds torch can use in this process (GPUs do not come and go while it runs)."""
    torch = import_torch()
    kinds = {"cpu"}
    if torch.cuda.is_available():
        kinds.add("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        kinds.add("mps")
    return frozenset(kinds)


def torch_dtype(name: str) -> Any:
    return "auto" if name == "auto" else getattr(import_torch(), name)


def context_length(model: Any) -> int | None:
    config = getattr(model.config, "text_config", None) or model.config
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def input_device(model: Any) -> Any:
    embeddings = model.get_input_embeddings()
    return embeddings.weight.device if embeddings is not None else model.device


def encode(tokenizer: Any, prompt: Prompt, raw: bool) -> dict[str, Any]:
    """Token ids for a prompt: the chat template unless ``raw`` or the tokenizer has none."""
    if raw or not getattr(tokenizer, "chat_template", None):
        text = prompt if isinstance(prompt, str) else plain_transcript(prompt)
        return dict(tokenizer(text, return_tensors="pt"))
    messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt",
                                            return_dict=True)
    return {key: encoded[key] for key in ("input_ids", "attention_mask") if key in encoded}


def plain_transcript(messages: Any) -> str:
    """Messages as text, for tokenizers without a chat template."""
    lines = [f"{m['role']}: {m['content']}" for m in messages]
    return "\n".join(lines) + "\nassistant:"


@contextmanager
def seeded(seed: int | None, model: Any) -> Iterator[None]:
    """Seed torch for one generation without changing the caller's random state."""
    if seed is None:
        yield
        return
    torch = import_torch()
    cuda = [d.index or 0 for d in {p.device for p in model.parameters()} if d.type == "cuda"]
    with torch.random.fork_rng(devices=cuda):
        torch.manual_seed(seed)
        yield


_progress_lock = threading.Lock()
_progress_quieted = 0


@contextmanager
def library_progress_off(*, gguf: bool = False) -> Iterator[None]:
    """transformers' and huggingface_hub's own progress bars off during a managed load.

    The manager shows one progress display of its own (the ``%%llm`` status
    line, the dashboard row); the libraries' bars would land under it and stay
    in the saved notebook. They are turned back on after the last load that
    turned them off, when they were on. transformers' GGUF reader draws its
    bar with tqdm directly, whatever its setting: that one is swapped for a
    disabled bar while managed GGUF loads (``gguf=True``) run.
    """
    global _progress_quieted
    from huggingface_hub import utils as hub_utils

    logging_utils = import_transformers().utils.logging
    gguf_reader = _gguf_reader_module() if gguf else None
    with _progress_lock:
        if _progress_quieted == 0:
            _progress_state["transformers"] = logging_utils.is_progress_bar_enabled()
            _progress_state["hub"] = not hub_utils.are_progress_bars_disabled()
            logging_utils.disable_progress_bar()
            hub_utils.disable_progress_bars()
        if gguf_reader is not None and "gguf" not in _bars:
            _bars["gguf"] = gguf_reader.tqdm
            gguf_reader.tqdm = functools.partial(_bars["gguf"], disable=True)
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
                if "gguf" in _bars:
                    _gguf_reader_module().tqdm = _bars.pop("gguf")


_progress_state: dict[str, bool] = {}
_bars: dict[str, Any] = {}


def _gguf_reader_module() -> Any:
    """transformers' GGUF conversion module, when this transformers has one."""
    import importlib

    try:
        return importlib.import_module("transformers.modeling_gguf_pytorch_utils")
    except ImportError:
        return None


def resolved(options: dict[str, Any]) -> dict[str, Any]:
    """Options with their secrets (a ``token`` in ``load_kwargs``) read now, when the model loads."""
    return {key: value.resolve() if isinstance(value, Secret) else value for key, value in options.items()}


def finish_reason(answer: AnswerFilter, tokens: int, max_new: int) -> FinishReason:
    """Why an answer ended: where the filter cut it (a stop string, a repetition), the limit, or the model."""
    return answer.reason or ("length" if tokens >= max_new else "stop")


def out_of_memory(model_id: str) -> GenerationError:
    return GenerationError(f"{model_id!r} ran out of memory while generating; lower max_new_tokens or "
                           "shorten the prompt, or free memory (unload other models, %llm gc)", model_id=model_id)


def drain(pieces: queue.Queue) -> Iterator[str]:
    """Pieces from the worker until it is done; waits in short slices so interrupts land."""
    while True:
        try:
            piece = pieces.get(timeout=0.1)
        except queue.Empty:
            continue
        if piece is DONE:
            return
        yield piece


class AnswerSink:
    """Where the streamer puts pieces when nobody streams: the answer's filter, which sets ``ended`` where it ends."""

    def __init__(self, answer: AnswerFilter, ended: threading.Event) -> None:
        self.answer = answer
        self.ended = ended

    def put(self, piece: str) -> None:
        self.answer.feed(piece)
        if self.answer.stopped:
            self.ended.set()


def generate_options(tokenizer: Any, params: GenerationParams, max_new: int, *, window: int | None,
                     prompt_tokens: int) -> dict[str, Any]:
    """transformers' ``generate`` options for ``params``; the repetition penalty is ours, on the answer's last
    ``window`` tokens (transformers' own would count the prompt and the whole answer: it is set to 1.0)."""
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
        kwargs["repetition_penalty"] = 1.0
    ours = (penalty_processors(params.repetition_penalty, window, prompt_tokens)
            if params.penalized and params.repetition_penalty else None)
    kwargs.update(params.extra)
    if ours is not None:
        kwargs["logits_processor"] = type(ours)([*kwargs.get("logits_processor", []), *ours])
    if kwargs.get("min_new_tokens", 0) > max_new:  # the context rule lowered the limit
        kwargs["min_new_tokens"] = max_new
    return kwargs


def penalty_processors(penalty: float, window: int | None, prompt_tokens: int) -> Any:
    """A logits processor list holding the repetition penalty on the answer's last ``window`` tokens."""
    return import_transformers().LogitsProcessorList([_recent_penalty_class()(penalty, window, prompt_tokens)])


@functools.cache
def _recent_penalty_class() -> type:
    class RecentRepetitionPenalty(import_transformers().LogitsProcessor):  # type: ignore[misc]
        """llama.cpp's ``repeat_penalty``: each token among the answer's last ``window`` (``None``: all) has its
        score divided by ``penalty`` (multiplied, where negative). transformers' own processor counts the
        prompt and every token of the answer."""

        def __init__(self, penalty: float, window: int | None, prompt_tokens: int) -> None:
            self.penalty = penalty
            self.window = window
            self.prompt_tokens = prompt_tokens

        def __call__(self, input_ids: Any, scores: Any) -> Any:
            torch = import_torch()
            start = self.prompt_tokens if self.window is None else input_ids.shape[-1] - self.window
            recent = input_ids[:, max(start, self.prompt_tokens):]
            if recent.shape[-1] == 0:
                return scores
            picked = torch.gather(scores, 1, recent)
            picked = torch.where(picked < 0, picked * self.penalty, picked / self.penalty)
            return scores.scatter(1, recent, picked)

    return RecentRepetitionPenalty


def stop_criteria(stop: threading.Event) -> Any:
    return import_transformers().StoppingCriteriaList([_stop_when_set_class()(stop)])


@functools.cache
def _stop_when_set_class() -> type:
    class StopWhenSet(import_transformers().StoppingCriteria):  # type: ignore[misc]
        """Ends generation at the next token once the event is set (interrupt, stop string)."""

        def __init__(self, stop: threading.Event) -> None:
            self.stop = stop

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            torch = import_torch()
            return torch.full((input_ids.shape[0],), self.stop.is_set(), dtype=torch.bool,
                              device=input_ids.device)

    return StopWhenSet


_UTF8_MAX_BYTES = 4  # the longest UTF-8 sequence: no valid character needs more tokens than this


@functools.cache
def streamer_class() -> type:
    import_transformers()
    from transformers.generation.streamers import BaseStreamer

    class QueueStreamer(BaseStreamer):
        """Incremental detokenizer feeding a queue: text appears as soon as it is whole.

        Unlike transformers' TextStreamer it does not wait for a space, so code
        and text without spaces stream too. It decodes a small window (the
        last emitted chunk as context, plus the new tokens) per step, so the
        cost stays linear in the answer length; a trailing replacement
        character (half a UTF-8 sequence) is held back until complete, but
        only for as many tokens as a UTF-8 character can span: after that the
        bytes are really invalid and are shown, so a model that emits them
        forever still streams (and the window stays small).
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
            incomplete = text.endswith("\ufffd") and len(self.tokens) - self.read_offset < _UTF8_MAX_BYTES
            if len(text) > len(before) and (final or not incomplete):
                self.pieces.put(text[len(before):])
                self.prefix_offset, self.read_offset = self.read_offset, len(self.tokens)

    return QueueStreamer
