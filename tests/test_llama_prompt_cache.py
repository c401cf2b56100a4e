"""llama.cpp reuses what its cache holds of a prompt, and a greedy answer never depends on the request before it.

Plain prefix reuse (llama-cpp-python's own) changed 5 of 12 answers below: the same prompt asked again, a
conversation's next turn. The prompt is evaluated in batches its own tokens decide, and only whole batches
made exactly so are reused (jupyter_llm_manager/backends/llama_cpp/prompt_cache.py).
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.backends.llama_cpp.prompt_cache import ChatMarks, plan
from jupyter_llm_manager.models.builtin import INSTALL_HINT, smollm2_file

GGUF = smollm2_file()
needs_model = pytest.mark.skipif(GGUF is None or importlib.util.find_spec("llama_cpp") is None,
                                 reason=f"needs llama-cpp-python and the SmolLM2 file ({INSTALL_HINT})")
END = 2  # a made-up end-of-turn token, chat head and answer header, for the plans alone
MARKS = ChatMarks(head=(5, 5, 5), header=(1, 9, 9))


def plan_of(tokens: list[int], chunk: int = 8, singles: bool = True) -> list[tuple[int, int]]:
    array = np.asarray(tokens)
    return plan(array, array == END, MARKS, chunk, singles)


def test_a_plan_cuts_after_the_head_the_first_turn_and_each_header_and_takes_answers_one_token_at_a_time():
    tokens = [5, 5, 5, 5, 5, 5, 5, END, 1, 9, 9, 7, 7, 7, END, 5, 1, 9, 9]
    assert plan_of(tokens) == [(0, 3), (3, 11), (11, 12), (12, 13), (13, 19)]
    assert plan_of(tokens, singles=False) == [(0, 3), (3, 11), (11, 19)]  # the answer with what follows
    own_system = [6, 6, END, 5, 5, 5, 6, 6]  # no head at the start: the first turn's end instead
    assert plan_of(own_system) == [(0, 3), (3, 8)]


def test_a_long_stretch_is_cut_every_chunk_from_its_start():
    assert plan_of([6] * 20) == [(0, 8), (8, 16), (16, 20)]
    assert plan_of([5, 5, 5] + [6] * 20) == [(0, 3), (3, 11), (11, 19), (19, 23)]


def test_a_prompt_s_plan_begins_with_the_plan_of_the_conversation_it_continues():
    turn = [5, 5, 5, 6, 6, END, 5, 6, 1, 9, 9]  # ends with the header: the answer comes next
    answer = [7, 8, 7, 8, 7, 8, 7]  # generated one token at a time
    following = turn + answer + [END, 5, 6, 6, END, 1, 9, 9]
    assert plan_of(turn, chunk=4)[-1] == (7, 11)
    assert plan_of(following, chunk=4)[:len(plan_of(turn, chunk=4))] == plan_of(turn, chunk=4)
    after_turn = [span for span in plan_of(following, chunk=4) if span[0] >= len(turn)]
    last = len(turn) + len(answer) - 1  # the answer's last token starts the batch of the next message
    assert after_turn[:len(answer) - 1] == [(p, p + 1) for p in range(len(turn), last)]
    assert after_turn[len(answer) - 1] == (last, last + 4)  # with the end of the turn, a chunk from its start


@pytest.fixture(scope="module")
def cpp():
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    manager.register("cpp", source=str(GGUF), backend="llama_cpp", max_context=2048, load_kwargs={"n_threads": 2})
    yield manager
    manager.close()


@pytest.fixture
def decoded(monkeypatch) -> list[int]:
    """The size of every batch llama.cpp evaluates from here on."""
    from llama_cpp._internals import LlamaContext

    sizes: list[int] = []
    original = LlamaContext.decode

    def counted(self, batch):
        sizes.append(batch.n_tokens())
        return original(self, batch)

    monkeypatch.setattr(LlamaContext, "decode", counted)
    return sizes


GREEDY = {"max_new_tokens": 32, "temperature": 0}  # the default repetition penalty on: it shows differences most
TOPICS = ["lighthouses", "volcanoes", "the moon", "bread", "chess", "rivers"]
LONG = "Remember these: " + ", ".join(f"item {i} is {w}" for i, w in enumerate(
    ["apple", "river", "stone", "cloud", "lamp", "violin", "ocean", "pepper", "maple", "tiger"] * 3))


def fresh(manager: LLMManager, prompt) -> str:
    manager.unload("cpp")
    manager.load("cpp")
    return manager.generate("cpp", prompt, **GREEDY).text


@needs_model
@pytest.mark.parametrize("topic", TOPICS)
def test_the_same_prompt_again_and_a_conversation_s_next_turn_answer_as_on_a_fresh_model(cpp, topic):
    question = f"Tell me about {topic}."
    alone = fresh(cpp, question)
    assert cpp.generate("cpp", question, **GREEDY).text == alone  # the same prompt, its answer cached
    turn = [{"role": "user", "content": question}, {"role": "assistant", "content": alone},
            {"role": "user", "content": "Tell me more."}]
    expected = fresh(cpp, turn)
    fresh(cpp, question)  # the first turn, as a conversation has it
    assert cpp.generate("cpp", turn, **GREEDY).text == expected


@needs_model
def test_answers_after_different_earlier_requests_are_the_fresh_models(cpp):
    prompts = ["What is the capital of France?", LONG + " Which item is 7?",
               [{"role": "system", "content": "You answer in one sentence."},
                {"role": "user", "content": "Why is the sky blue?"}]]
    earlier = ["What is the capital of Italy?", LONG + " Which item is 3?", "Count to ten.",
               [{"role": "system", "content": "You answer in one sentence."}, {"role": "user", "content": "Hi"}]]
    for prompt in prompts:
        expected = fresh(cpp, prompt)
        for before in earlier:
            cpp.generate("cpp", before, **GREEDY)
            assert cpp.generate("cpp", prompt, **GREEDY).text == expected, (prompt, before)


@needs_model
def test_a_conversation_s_next_turn_evaluates_only_its_new_message(cpp, decoded):
    question = [{"role": "user", "content": "Name three rivers."}]
    first = cpp.generate("cpp", question, **GREEDY)
    turn = question + [{"role": "assistant", "content": first.text}, {"role": "user", "content": "And lakes?"}]
    decoded.clear()
    second = cpp.generate("cpp", turn, **GREEDY)
    answer_steps = second.completion_tokens - 1  # each answer token but the last is evaluated alone
    prompt_evaluated = sum(decoded) - answer_steps
    assert second.prompt_tokens > first.prompt_tokens + first.completion_tokens
    assert prompt_evaluated <= second.prompt_tokens - first.prompt_tokens - first.completion_tokens + 2


@needs_model
def test_prompts_that_share_a_system_message_skip_it_and_a_repeated_prompt_evaluates_nothing(cpp, decoded):
    cpp.generate("cpp", "What is the capital of Italy?", **GREEDY)
    decoded.clear()
    result = cpp.generate("cpp", "What is the capital of France?", **GREEDY)
    assert sum(decoded) - (result.completion_tokens - 1) < result.prompt_tokens - 10  # the system message kept
    decoded.clear()
    again = cpp.generate("cpp", "What is the capital of France?", **GREEDY)
    assert sum(decoded) - (again.completion_tokens - 1) <= 1  # nothing of the prompt: its logits are put back


@needs_model
def test_the_model_used_directly_or_an_answer_cut_short_leaves_no_wrong_cache(cpp):
    question = "Tell me about the sea."
    expected = fresh(cpp, question)
    with cpp.use("cpp") as lease:
        lease.model.create_completion("The sea is", max_tokens=5, temperature=0)  # llama-cpp-python's own reuse
    assert cpp.generate("cpp", question, **GREEDY).text == expected
    stream = cpp.stream("cpp", question, **GREEDY)
    next(iter(stream))
    stream.close()  # the answer stops after a piece: the cache holds part of it
    assert cpp.generate("cpp", question, **GREEDY).text == expected
    assert cpp.generate("cpp", question, stop=["the"], **GREEDY).text != expected
    assert cpp.generate("cpp", question, **GREEDY).text == expected
    with cpp.use("cpp") as lease:  # as many tokens as the cache held, other ones, in llama-cpp-python's batches
        held = lease.model.n_tokens
        lease.model.reset()
        lease.model.eval(lease.model.tokenize(b"The sea " * held)[:held])
    assert cpp.generate("cpp", question, **GREEDY).text == expected


@needs_model
def test_a_llama_cpp_model_keeps_the_cpu_sampler_looking_until_its_manager_closes():
    from jupyter_llm_manager.support.cpus import SAMPLER

    before = SAMPLER.holders
    manager = LLMManager(config_path=False, preload=False, cooperate=False)
    manager.register("cpp", source=str(GGUF), backend="llama_cpp", max_context=512)
    manager.generate("cpp", "Hi", max_new_tokens=2)
    assert SAMPLER.holders == before + 1 and SAMPLER.running
    manager.close()
    assert SAMPLER.holders == before
