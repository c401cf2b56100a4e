"""Answering with a loaded transformers model: generate, stream (a worker thread fed through a queue) and embed.

A stop event ends a stream within one token, so an interrupt leaves the
model loaded and usable; torch's threads are chosen for each answer from the
idle cores (:mod:`.threads`).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from ...errors import GenerationError, InvalidGenerationParameters
from ...generation import AnswerFilter, GenerationParams, GenerationResult, Prompt, StreamInterrupted
from ..base import LoadedModel, TextGenerator, release_frames
from . import adapters as peft_adapters
from .support import (
    DONE,
    AnswerSink,
    drain,
    encode,
    finish_reason,
    generate_options,
    import_torch,
    input_device,
    out_of_memory,
    seeded,
    stop_criteria,
    streamer_class,
)
from .threads import TORCH_THREADS

__all__ = ["Answering"]

_JOIN_TIMEOUT_S = 30.0


class Answering:
    """The answering part of the transformers backend (a mixin: the backend itself loads)."""

    def embed(self, loaded: LoadedModel, texts: Sequence[str], *, model_id: str) -> list[list[float]]:
        """Unit-length vectors: the last hidden state averaged over each text's tokens."""
        torch = import_torch()
        tokenizer, model = loaded.tokenizer, loaded.model
        peft_adapters.use_adapter(loaded)
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        try:
            batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                              max_length=loaded.context_length or None)
            batch = {key: value.to(input_device(model)) for key, value in batch.items()}
            with torch.inference_mode(), _threads(torch, model):
                hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1)
            vectors = torch.nn.functional.normalize(pooled.float(), dim=-1)
        except torch.OutOfMemoryError as error:
            release_frames(error)
            raise out_of_memory(model_id) from None
        except (ValueError, TypeError, RuntimeError) as error:
            release_frames(error)
            raise GenerationError(f"{model_id!r} failed to embed: {error}", model_id=model_id) from error
        return vectors.cpu().tolist()

    # -- generation ----------------------------------------------------------------

    def generate(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
                 model_id: str, raw: bool) -> GenerationResult:
        torch = import_torch()
        params = loaded.generation.apply(params)
        inputs, max_new, warnings = self._prepare(loaded, prompt, params, model_id, raw)
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        kwargs = generate_options(loaded.tokenizer, params, max_new, window=loaded.generation.window,
                                  prompt_tokens=prompt_tokens)
        peft_adapters.use_adapter(loaded)
        answer = AnswerFilter(params.stop, repetition=params.stops_on_repetition)
        reading = bool(params.stop) or params.stops_on_repetition  # read the answer as it is made: stop at its end
        if reading:
            ended = threading.Event()
            kwargs.update(streamer=streamer_class()(loaded.tokenizer, AnswerSink(answer, ended)),
                          stopping_criteria=stop_criteria(ended))
        started = time.perf_counter()
        try:
            with torch.inference_mode(), seeded(params.seed, loaded.model), _threads(torch, loaded.model):
                output = loaded.model.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError as error:
            release_frames(error)  # the activations of the failed step
            raise out_of_memory(model_id) from None
        except (ValueError, TypeError, RuntimeError) as error:
            release_frames(error)
            raise GenerationError(f"{model_id!r} failed to generate: {error}", model_id=model_id) from error
        seconds = time.perf_counter() - started
        tokens = int(output.shape[-1]) - prompt_tokens
        if reading:
            answer.flush()
            text = answer.text
        else:
            text = loaded.tokenizer.decode(output[0, prompt_tokens:], skip_special_tokens=True)
        return GenerationResult(model_id, text, prompt_tokens, tokens, seconds, finish_reason(answer, tokens, max_new),
                                warnings, max_new, context_limited=max_new < params.max_new_tokens)

    def stream(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, *,
               model_id: str, raw: bool, stop: threading.Event) -> TextGenerator:
        torch = import_torch()
        params = loaded.generation.apply(params)
        inputs, max_new, warnings = self._prepare(loaded, prompt, params, model_id, raw)
        pieces: queue.Queue = queue.Queue()
        outcome: dict[str, Any] = {}
        prompt_tokens = int(inputs["input_ids"].shape[-1])
        kwargs = generate_options(loaded.tokenizer, params, max_new, window=loaded.generation.window,
                                  prompt_tokens=prompt_tokens)
        kwargs["streamer"] = streamer_class()(loaded.tokenizer, pieces)
        kwargs["stopping_criteria"] = stop_criteria(stop)
        peft_adapters.use_adapter(loaded)

        def work() -> None:
            try:
                with torch.inference_mode(), seeded(params.seed, loaded.model), _threads(torch, loaded.model):
                    output = loaded.model.generate(**inputs, **kwargs)  # on this worker thread: its threads too
                outcome["tokens"] = int(output.shape[-1] - prompt_tokens)
            except BaseException as error:  # noqa: BLE001 - handed to the consuming thread, which raises it
                outcome["error"] = error
            finally:
                pieces.put(DONE)

        worker = threading.Thread(target=work, name=f"llm-generate-{model_id}", daemon=True)
        started = time.perf_counter()
        worker.start()
        text_filter = AnswerFilter(params.stop, repetition=params.stops_on_repetition)
        interrupted = cut = False
        try:
            try:
                for piece in drain(pieces):
                    if stop.is_set() and not text_filter.stopped:  # stopped from outside: pieces made meanwhile
                        cut = True  # (a busy machine lets the worker run ahead of this reader) are not shown
                        break
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
        result = _stream_result(outcome, model_id, prompt_tokens, max_new, started, text_filter,
                                stop, warnings, params.max_new_tokens, cut=cut)
        if interrupted:
            raise StreamInterrupted(result)
        return result

    def _prepare(self, loaded: LoadedModel, prompt: Prompt, params: GenerationParams, model_id: str,
                 raw: bool) -> tuple[dict[str, Any], int, tuple[str, ...]]:
        """Tokenize; apply the context rule (see README) to the token budget."""
        try:
            inputs = encode(loaded.tokenizer, prompt, raw)
        except Exception as error:  # chat template errors (role order, unsupported roles)
            raise GenerationError(f"could not prepare the prompt for {model_id!r}: {error}",
                                  model_id=model_id) from error
        device = input_device(loaded.model)
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


def _threads(torch: Any, model: Any) -> AbstractContextManager[Any]:
    """torch's threads chosen from the idle cores while a model on the CPU computes on this thread."""
    return TORCH_THREADS.computing(torch) if input_device(model).type == "cpu" else nullcontext()


def _stream_result(outcome: dict[str, Any], model_id: str, prompt_tokens: int, max_new: int, started: float,
                   text_filter: AnswerFilter, stop: threading.Event, warnings: tuple[str, ...],
                   requested: int, *, cut: bool = False) -> GenerationResult:
    """The stream's result; ``cut``: stopped while pieces were still unread (the answer shown is cut short)."""
    error = outcome.pop("error", None)
    if error is not None:
        release_frames(error)
        if type(error).__name__ == "OutOfMemoryError":
            raise out_of_memory(model_id) from None
        raise GenerationError(f"{model_id!r} failed to generate: {error}", model_id=model_id) from error
    tokens = outcome.get("tokens", 0)
    reason = finish_reason(text_filter, tokens, max_new)
    if cut or (stop.is_set() and not text_filter.stopped and tokens < max_new):
        reason = "interrupted"
    return GenerationResult(model_id, text_filter.text, prompt_tokens, tokens,
                            time.perf_counter() - started, reason, warnings, max_new,
                            context_limited=max_new < requested)


