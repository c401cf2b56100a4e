"""A llama.cpp model's KV cache reused from one request to the next, without an answer depending on the one before.

llama.cpp's numbers depend on how a prompt is cut into batches: a token in a
batch of one (as each answer token is while it is generated) and the same
token inside a larger batch get slightly different keys and values, enough
to change a greedy answer (llama-cpp-python's own prefix reuse changed 6 of
16 answers in a trial). So every prompt is evaluated in batches cut by a plan
that depends on the prompt alone (:func:`plan`):

- a batch ends after each end-of-turn token, and after each assistant header
  (where an answer starts);
- a previous answer in the prompt (from its header to its end-of-turn token)
  is evaluated one token at a time, as it was when it was generated;
- everything else is cut at fixed positions, every ``chunk`` tokens from 0.

:class:`PromptCache` remembers the batches that made each cached position.
A request reuses the longest run of leading batches that are its plan's own
batches over the same tokens, and evaluates the rest. The model's state
after the prompt is then exactly what a fresh model would compute: greedy
answers are the same with or without a request before, while a
conversation's next turn evaluates only its new message, and prompts that
share a system message skip it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator, Sequence
from typing import Any

import numpy as np

__all__ = ["CHUNK", "PromptCache", "answer_header", "completion", "plan"]

log = logging.getLogger(__name__)

#: Tokens per batch between fixed positions: batches this size evaluate as fast as 512 on a CPU, and keep
#: more of a shared prefix (a shorter system message) reusable.
CHUNK = 64

Span = tuple[int, int]


def plan(tokens: np.ndarray, ends: np.ndarray, header: Sequence[int], chunk: int, singles: bool) -> list[Span]:
    """The batches ``(start, stop)`` that evaluate ``tokens``; ``ends``: which tokens end a turn.

    ``header``: the tokens that open an answer (empty: none known);
    ``singles``: previous answers one token at a time (else in chunks).
    Every cut depends only on the tokens before it, so a prompt's plan
    begins with the plan of any prompt it extends.
    """
    length = len(tokens)
    ending = np.flatnonzero(ends)
    cuts = set(range(chunk, length, chunk))
    cuts.update((ending + 1).tolist())
    width = len(header)
    if width and length >= width:
        windows = np.lib.stride_tricks.sliding_window_view(tokens, width)
        starts = np.flatnonzero(np.all(windows == np.asarray(header), axis=1)) + width
        cuts.update(starts.tolist())
        if singles:
            for start in starts.tolist():
                after = np.searchsorted(ending, start)
                if after < len(ending) and ending[after] > start:
                    cuts.update(range(start + 1, int(ending[after]) + 1))
    bounds = [0, *sorted(cut for cut in cuts if 0 < cut < length), length]
    return list(itertools.pairwise(bounds))


class PromptCache:
    """The batches that made one model's KV cache, and the evaluation of each prompt along its plan.

    ``chunk``: the fixed cut positions' spacing; ``singles``: previous answers
    one token at a time (on a CPU: then a conversation reuses its last
    answer; offloaded to a GPU, where a batch of one is far slower than a
    batch, they are evaluated in chunks). Used by one request at a time (the
    model is serial).
    """

    def __init__(self, model: Any, *, chunk: int, singles: bool) -> None:
        self.chunk = max(1, min(chunk, int(model.n_batch)))
        self.singles = singles
        self.header: tuple[int, ...] | None = None  # what opens an answer, in tokens (see answer_header)
        self.enabled = not _truncation_unsupported(model)
        self._spans: list[Span] = []  # the batches behind the first ``_cached`` positions, in order
        self._cached = 0
        self._plan: list[Span] = []
        self._ends: dict[int, bool] = {}  # token -> whether it ends a turn (llama.cpp's end-of-generation tokens)

    def prepare(self, model: Any, tokens: list[int], header: Sequence[int]) -> int:
        """Make the model hold all of the prompt's plan but its last batch (reused or evaluated); its start.

        llama-cpp-python's completion then evaluates the last batch (its own
        prefix match stops exactly there) and samples after it.
        """
        array = np.asarray(tokens, dtype=np.intc)
        self._plan = plan(array, self._ending(model, array), header, self.chunk, self.singles)
        reuse = self._reusable(model, array) if self.enabled else 0
        self._spans = [span for span in self._spans if span[1] <= reuse]
        self._cached = reuse
        model.n_tokens = reuse
        for start, stop in self._plan[len(self._spans):-1]:
            model.eval(tokens[start:stop])  # one decode: a batch is never larger than n_batch
            self._spans.append((start, stop))
            self._cached = stop
        return self._plan[-1][0]

    def settle(self, model: Any, prompt_length: int) -> None:
        """After the completion: its last batch, then each answer token as llama.cpp evaluated it (one at a time)."""
        evaluated = int(model.n_tokens)
        self._spans = [span for span in self._plan if span[1] <= min(evaluated, prompt_length)]
        self._spans += [(position, position + 1) for position in range(prompt_length, evaluated)]
        self._cached = self._spans[-1][1] if self._spans else 0
        if self._cached != evaluated:  # not what this plan made (an error part way): trust none of it
            self.forget()

    def forget(self) -> None:
        """The model's cache is no longer known (reset, used directly): the next prompt is evaluated whole."""
        self._spans, self._cached = [], 0

    def _reusable(self, model: Any, tokens: np.ndarray) -> int:
        """The end of the leading batches the cache holds exactly as this prompt's plan makes them."""
        if int(model.n_tokens) != self._cached or not self._spans:
            return 0  # someone evaluated on the model since (a use() lease, a reset): nothing is known
        cached = np.asarray(model.input_ids[:self._cached])
        length = min(len(cached), len(tokens))
        differ = np.flatnonzero(cached[:length] != tokens[:length])
        same = int(differ[0]) if len(differ) else length
        reuse = 0
        for ours, theirs in zip(self._plan[:-1], self._spans):  # never the last batch: its logits are sampled
            if ours != theirs or ours[1] > same:
                break
            reuse = ours[1]
        if reuse and not model._ctx.kv_cache_seq_rm(-1, reuse, -1):
            log.debug("llama.cpp cannot cut this model's cache at %d tokens: the prompt is evaluated whole", reuse)
            return 0
        return reuse

    def _ending(self, model: Any, tokens: np.ndarray) -> np.ndarray:
        """Which of ``tokens`` end a turn (llama.cpp's end-of-generation tokens), looked up once per token."""
        import llama_cpp

        for token in np.unique(tokens).tolist():
            if token not in self._ends:
                self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(model._model.vocab, token))
        ending = [token for token, ends in self._ends.items() if ends]
        return np.isin(tokens, ending)


def completion(model: Any, cache: PromptCache, tokens: list[int], stop: list[str],
               options: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
    """llama-cpp-python's completion chunks for ``tokens``, the prompt evaluated along its plan.

    Nothing runs until the first chunk is asked for (the caller times and
    interrupts from there); the cache records what was evaluated however the
    stream ends.
    """
    try:
        cache.prepare(model, tokens, cache.header or ())
        yield from model.create_completion(tokens, stream=True, stop=stop or None, **options)
    finally:
        cache.settle(model, len(tokens))


def answer_header(model: Any, formatter: Any) -> tuple[int, ...]:
    """The tokens the chat template puts where an answer starts (its generation prompt); empty when unclear."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    messages: Any = [{"role": "user", "content": "Hello"}]
    try:
        closed = Jinja2ChatFormatter(template=formatter.template, eos_token=formatter.eos_token,
                                     bos_token=formatter.bos_token, add_generation_prompt=False)
        rendered = [model.tokenize(render(messages=messages).prompt.encode("utf-8"), add_bos=False, special=True)
                    for render in (formatter, closed)]
    except Exception as error:  # noqa: BLE001 - a template that needs more than one user message: no header
        log.debug("no answer header from the chat template: %s", error)
        return ()
    opened, closed_tokens = rendered
    if len(opened) <= len(closed_tokens) or opened[:len(closed_tokens)] != closed_tokens:
        return ()
    return tuple(opened[len(closed_tokens):])


def _truncation_unsupported(model: Any) -> bool:
    """Recurrent models keep a state, not a cache of positions: theirs cannot be cut back to a prefix."""
    import llama_cpp

    for check in ("llama_model_is_recurrent", "llama_model_is_hybrid"):
        probe = getattr(llama_cpp, check, None)
        if probe is not None and probe(model.model):
            return True
    return False
