"""A llama.cpp model's KV cache reused from one request to the next, without an answer depending on the one before.

llama.cpp's numbers depend on how a prompt is cut into batches: a token in a
batch of one (as each answer token is while it is generated) and the same
token inside a larger batch get slightly different keys and values, enough
to change a greedy answer (llama-cpp-python's own prefix reuse changed 5 of
12 answers in a trial). So every prompt is evaluated in batches cut by a plan
that depends on the prompt alone (:func:`plan`):

- a batch ends where the chat template's fixed head ends (its default system
  message and the user's header) or, in a prompt that does not start with
  it, after the first end-of-turn token (a system message of one's own), and
  where an answer starts (after each assistant header);
- a previous answer in the prompt (from its header to its end-of-turn token)
  is evaluated one token at a time, as it was when it was generated, but
  for its last token, which starts the next batch (an answer cut at
  ``max_new_tokens`` never evaluated it: the next turn evaluates it with its
  new message, in one batch, as llama-cpp-python itself would);
- every stretch between those cuts is cut every ``chunk`` tokens from its
  start (a batch is never larger than llama.cpp's ``n_batch``, and a long
  shared prefix without chat structure, a raw prompt's document, is
  reused in whole chunks).

:class:`PromptCache` remembers the batches that made each cached position,
and the logits after the last prompt's end. A request reuses the longest
run of leading batches that are its plan's own over the same tokens and
evaluates the rest; the same prompt again evaluates nothing (its logits are
put back). The model's state after the prompt is then exactly a fresh
model's: greedy answers are the same with or without a request before,
while a conversation's next turn evaluates only its new message and prompts
that share a system message skip it.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["CHUNK", "ChatMarks", "PromptCache", "chat_marks", "completion", "plan"]

log = logging.getLogger(__name__)

#: The longest batch of a stretch: batches this size evaluate as fast as 512 on a CPU, and keep most of a long
#: shared prefix without chat structure (a raw prompt's document) reusable.
CHUNK = 256

Span = tuple[int, int]


@dataclass(frozen=True)
class ChatMarks:
    """What a model's chat template puts around messages, in tokens (empty: not known)."""

    head: tuple[int, ...] = ()  # what every prompt starts with: the default system message, the user's header
    header: tuple[int, ...] = ()  # what opens an answer (the generation prompt)


def plan(tokens: np.ndarray, ends: np.ndarray, marks: ChatMarks, chunk: int, singles: bool) -> list[Span]:
    """The batches ``(start, stop)`` that evaluate ``tokens``; ``ends``: which tokens end a turn.

    ``singles``: previous answers one token at a time (else in chunks).
    Every cut depends only on the tokens before it, so a prompt's plan
    begins with the plan of any prompt it extends.
    """
    length = len(tokens)
    ending = np.flatnonzero(ends)
    cuts: set[int] = set()
    head = len(marks.head)
    if head and length > head and tuple(tokens[:head].tolist()) == marks.head:
        cuts.add(head)
    elif len(ending):  # a system message of one's own, or none: its end, or the first turn's
        cuts.add(int(ending[0]) + 1)
    width = len(marks.header)
    if width and length >= width:
        windows = np.lib.stride_tricks.sliding_window_view(tokens, width)
        starts = np.flatnonzero(np.all(windows == np.asarray(marks.header), axis=1)) + width
        cuts.update(starts.tolist())
        if singles:
            for start in starts.tolist():
                after = np.searchsorted(ending, start)
                if after < len(ending) and ending[after] > start:  # its last token starts the next batch
                    cuts.update(range(start + 1, int(ending[after])))
    marked = [0, *sorted(cut for cut in cuts if 0 < cut < length), length]
    for start, stop in itertools.pairwise(marked):  # fixed positions within each stretch: at most ``chunk``
        cuts.update(range(start + chunk, stop, chunk))
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
        self.marks: ChatMarks | None = None  # found from the chat template at the first request
        self.enabled = not _truncation_unsupported(model)
        self._restores = _samples_a_cached_prompt(model)
        self._spans: list[Span] = []  # the batches behind the first ``_cached`` positions, in order
        self._cached = 0
        self._plan: list[Span] = []
        self._logits: np.ndarray | None = None  # after the last prompt's end, when it was evaluated as planned
        self._logits_at = 0  # that prompt's length
        self._ends: dict[int, bool] = {}  # token -> whether it ends a turn (llama.cpp's end-of-generation tokens)

    def prepare(self, model: Any, tokens: list[int]) -> None:
        """Make the model hold the prompt as its plan makes it, reusing what it holds already.

        Either all of it with its logits put back (the same prompt again), or
        all but its last batch, which llama-cpp-python's completion then
        evaluates (its own prefix match stops exactly there) before sampling.
        """
        array = np.asarray(tokens, dtype=np.intc)
        self._plan = plan(array, self._ending(model, array), self.marks or ChatMarks(), self.chunk, self.singles)
        reuse = self._reusable(model, array) if self.enabled else 0
        logits, self._logits = self._logits, None
        if reuse == len(tokens) == self._logits_at and logits is not None and _put_back(model, logits, reuse):
            self._logits = logits
            self._spans, self._cached = list(self._plan), reuse
            return
        reuse = min(reuse, self._plan[-1][0])  # the last batch's logits are sampled: it is evaluated again
        if reuse and not model._ctx.kv_cache_seq_rm(-1, reuse, -1):
            log.debug("llama.cpp cannot cut this model's cache at %d tokens: the prompt is evaluated whole", reuse)
            reuse = 0
        self._spans = [span for span in self._spans if span[1] <= reuse]
        self._cached = model.n_tokens = reuse
        for start, stop in self._plan[len(self._spans):-1]:
            model.eval(tokens[start:stop])  # one decode: a batch is never larger than n_batch
            self._spans.append((start, stop))
            self._cached = stop

    def evaluated(self, model: Any, prompt_length: int) -> None:
        """At the first piece of the answer: keep the logits after the prompt if nothing was evaluated since."""
        if self._restores and int(model.n_tokens) == prompt_length:
            import llama_cpp

            pointer = llama_cpp.llama_get_logits_ith(model.ctx, -1)
            if pointer:
                self._logits = np.ctypeslib.as_array(pointer, shape=(model.n_vocab(),)).copy()
                self._logits_at = prompt_length

    def settle(self, model: Any, prompt_length: int) -> None:
        """After the completion: its last batch, then each answer token as llama.cpp evaluated it (one at a time)."""
        evaluated = int(model.n_tokens)
        self._spans = [span for span in self._plan if span[1] <= min(evaluated, prompt_length)]
        self._spans += [(position, position + 1) for position in range(prompt_length, evaluated)]
        self._cached = self._spans[-1][1] if self._spans else 0
        if self._cached != evaluated or evaluated < prompt_length:  # not what this plan made: trust none of it
            self.forget()

    def forget(self) -> None:
        """The model's cache is no longer known (reset, used directly): the next prompt is evaluated whole."""
        self._spans, self._cached, self._logits = [], 0, None

    def _reusable(self, model: Any, tokens: np.ndarray) -> int:
        """The end of the leading batches the cache holds exactly as this prompt's plan makes them."""
        if int(model.n_tokens) != self._cached or not self._spans:
            return 0  # someone evaluated on the model since (a use() lease, a reset): nothing is known
        cached = np.asarray(model.input_ids[:self._cached])
        length = min(len(cached), len(tokens))
        differ = np.flatnonzero(cached[:length] != tokens[:length])
        same = int(differ[0]) if len(differ) else length
        reuse = 0
        for ours, theirs in zip(self._plan, self._spans):
            if ours != theirs or ours[1] > same:
                break
            reuse = ours[1]
        return reuse

    def _ending(self, model: Any, tokens: np.ndarray) -> np.ndarray:
        """Which of ``tokens`` end a turn (llama.cpp's end-of-generation tokens), looked up once per token."""
        import llama_cpp

        vocab = None
        for token in np.unique(tokens).tolist():
            if token not in self._ends:
                vocab = vocab or llama_cpp.llama_model_get_vocab(model.model)
                self._ends[token] = bool(llama_cpp.llama_vocab_is_eog(vocab, token))
        return np.isin(tokens, [token for token, ends in self._ends.items() if ends])


def completion(model: Any, cache: PromptCache, tokens: list[int], stop: list[str],
               options: dict[str, Any]) -> Generator[dict[str, Any], None, None]:
    """llama-cpp-python's completion chunks for ``tokens``, the prompt evaluated along its plan.

    Nothing runs until the first chunk is asked for (the caller times and
    interrupts from there); the cache records what was evaluated however the
    stream ends.
    """
    try:
        cache.prepare(model, tokens)
        chunks = model.create_completion(tokens, stream=True, stop=stop or None, **options)
        first = next(chunks, None)
        if first is not None:
            cache.evaluated(model, len(tokens))
            yield first
            yield from chunks
    finally:
        cache.settle(model, len(tokens))


def chat_marks(model: Any, formatter: Any) -> ChatMarks:
    """The chat template's head and answer header, in tokens, from two one-message prompts it renders."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    def tokens(render: Any, text: str) -> list[int]:
        messages: Any = [{"role": "user", "content": text}]
        return model.tokenize(render(messages=messages).prompt.encode("utf-8"), add_bos=False, special=True)

    try:
        closed = Jinja2ChatFormatter(template=formatter.template, eos_token=formatter.eos_token,
                                     bos_token=formatter.bos_token, add_generation_prompt=False)
        one, other, unopened = tokens(formatter, "Hello"), tokens(formatter, "Goodbye"), tokens(closed, "Hello")
    except Exception as error:  # noqa: BLE001 - a template that needs more than one user message
        log.debug("no chat marks from the chat template: %s", error)
        return ChatMarks()
    head = tuple(a for a, _ in itertools.takewhile(lambda pair: pair[0] == pair[1], zip(one, other)))
    opened = len(one) > len(unopened) and one[:len(unopened)] == unopened
    return ChatMarks(head=head, header=tuple(one[len(unopened):]) if opened else ())


def _put_back(model: Any, logits: np.ndarray, length: int) -> bool:
    """Make the model sample from ``logits`` with its first ``length`` tokens cached (nothing evaluated again)."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(model.ctx, -1)
    if not pointer or not model._ctx.kv_cache_seq_rm(-1, length, -1):
        return False
    model.n_tokens = length
    np.ctypeslib.as_array(pointer, shape=(len(logits),))[:] = logits
    model._requires_eval = False  # the logits are live: llama-cpp-python samples at once
    return True


def _samples_a_cached_prompt(model: Any) -> bool:
    """Whether this llama-cpp-python samples at once when the whole prompt is cached with live logits."""
    code = getattr(getattr(type(model), "generate", None), "__code__", None)
    return hasattr(model, "_requires_eval") and code is not None and "exact_prompt_cached" in code.co_varnames


def _truncation_unsupported(model: Any) -> bool:
    """Recurrent models keep a state, not a cache of positions: theirs cannot be cut back to a prefix."""
    import llama_cpp

    for check in ("llama_model_is_recurrent", "llama_model_is_hybrid"):
        probe = getattr(llama_cpp, check, None)
        if probe is not None and probe(model.model):
            return True
    return False
