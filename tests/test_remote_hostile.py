"""The openai backend against a server that misbehaves on purpose: it cannot hang, flood or fool the client."""

from __future__ import annotations

import gc
import time

import psutil
import pytest
from jlm_helpers.hostile_server import (
    ENOUGH,
    HostileServer,
    after,
    answer,
    chunk,
    chunked_cut,
    completion,
    endless,
    endless_body,
    events,
    failing,
    keep_alive,
)

from jupyter_llm_manager import GenerationError, LLMManager, ModelLoadingError

LIMIT = 500  # the most characters a message may have


@pytest.fixture
def server():
    with HostileServer() as hostile:
        yield hostile


@pytest.fixture
def manager():
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


def register(manager, server, model, model_id=None, **options):
    options.setdefault("timeout", 10)
    options.setdefault("max_retries", 0)
    return manager.register(model_id or model, backend="openai", base_url=server.url, model=model,
                            api_key="none", **options)


def failure(call) -> GenerationError:
    """The GenerationError ``call()`` raises (any other exception fails the test)."""
    with pytest.raises(GenerationError) as caught:
        call()
    assert len(str(caught.value)) <= LIMIT
    return caught.value


# -- a stream without end ---------------------------------------------------------------------------

def test_a_server_that_streams_without_end_is_cut_after_max_new_tokens(manager, server):
    server.serve("endless", endless("x"))
    register(manager, server, "endless")
    stream = manager.stream("endless", "Hi", max_new_tokens=20)
    pieces = list(stream)
    assert pieces == ["x"] * 20
    assert stream.result.finish_reason == "length" and stream.result.completion_tokens == 20
    assert server.hung_up.wait(10)  # the client closed the connection: the server's writes fail
    assert server.sent["endless"] < ENOUGH
    port = server.server.server_address[1]
    assert not [c for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
    assert manager.row("endless").in_use == 0 and manager.row("endless").details["last_error"] is None


def test_chunks_without_text_without_end_are_an_error(manager, server):
    server.serve("empty", endless(None))
    register(manager, server, "empty")
    error = failure(lambda: list(manager.stream("empty", "Hi", max_new_tokens=20)))
    assert "kept streaming past max_new_tokens=20" in str(error) and server.url in str(error)
    assert server.hung_up.wait(10)


def test_a_server_that_streams_whatever_it_is_asked_is_read_as_a_stream(manager, server):
    server.serve("endless", endless("x"))
    server.serve("cut", events(chunk("Hel"), chunk("lo"), done=False))
    register(manager, server, "endless")
    register(manager, server, "cut")
    result = manager.generate("endless", "Hi", max_new_tokens=20)
    assert result.text == "x" * 20 and result.finish_reason == "length"
    assert server.hung_up.wait(10) and server.sent["endless"] < ENOUGH
    assert "closed the stream before the answer finished" in str(failure(lambda: manager.generate("cut", "Hi")))


def test_a_whole_answer_without_end_is_cut_at_a_bounded_size(manager, server):
    server.serve("endless", endless_body("json"))
    register(manager, server, "endless")
    error = failure(lambda: manager.generate("endless", "Hi", max_new_tokens=20))
    assert "sent more than" in str(error) and server.url in str(error)
    assert server.hung_up.wait(10)


def test_a_line_without_end_is_cut_at_a_bounded_size(manager, server):
    server.serve("line", endless_body("events"))
    register(manager, server, "line")
    error = failure(lambda: list(manager.stream("line", "Hi", max_new_tokens=4000)))
    assert "line longer than" in str(error)
    assert server.hung_up.wait(10)


def test_keep_alives_without_an_answer_end_after_the_timeout(manager, server):
    server.serve("thinking", keep_alive(0.05))
    register(manager, server, "thinking", timeout=1)
    started = time.monotonic()
    error = failure(lambda: list(manager.stream("thinking", "Hi", max_new_tokens=20)))
    assert "sent no answer data for 1 s" in str(error) and "raise timeout" in str(error)
    assert time.monotonic() - started < 8  # the keep-alives do not keep it waiting for ever
    assert manager.row("thinking").details["reachable"] is True


# -- a stream cut before it finished ----------------------------------------------------------------

@pytest.mark.parametrize("cut", [events(chunk("Hel"), chunk("lo"), done=False), chunked_cut(chunk("Hel"), chunk("lo"))],
                         ids=["connection-closed", "chunked-framing-cut"])
def test_a_stream_cut_before_it_finished_is_an_error_that_keeps_the_partial_answer(manager, server, cut):
    server.serve("cut", cut)
    register(manager, server, "cut")
    stream = manager.stream("cut", "Hi", max_new_tokens=20)
    error = failure(lambda: list(stream))
    assert "closed the stream before the answer finished" in str(error) and server.url in str(error)
    assert "partial answer was kept" in str(error) and stream.text == "Hello"
    row = manager.row("cut")
    assert row.state == "loaded" and row.in_use == 0 and "closed the stream" in row.details["last_error"]


def test_a_stream_cut_before_any_text_is_an_error(manager, server):
    server.serve("silent", events(done=False))
    register(manager, server, "silent")
    error = failure(lambda: list(manager.stream("silent", "Hi", max_new_tokens=20)))
    assert "closed the stream before the answer finished" in str(error)


@pytest.mark.parametrize("ending", [
    (chunk("Hel"), chunk("lo", finish="stop")),  # a finish_reason, then the connection closes
    (chunk("Hel"), chunk("lo"), "[DONE]"),  # [DONE] without a finish_reason
])
def test_an_answer_that_says_it_finished_is_whole(manager, server, ending):
    server.serve("ok", events(*ending, done=False))
    register(manager, server, "ok")
    stream = manager.stream("ok", "Hi", max_new_tokens=20)
    assert "".join(stream) == "Hello" and stream.result.finish_reason == "stop"


# -- malformed answers ------------------------------------------------------------------------------

MALFORMED_CHUNKS = {
    "int-content": chunk(5),
    "object-content": chunk({"x": 1}),
    "list-content": chunk(["a", "b"]),
    "no-choices": {"x": 1},
    "choices-not-a-list": {"choices": "abc"},
    "choice-not-an-object": {"choices": [7]},
    "delta-not-an-object": {"choices": [{"delta": "text"}]},
    "no-delta": {"choices": [{"index": 0}]},
    "finish-not-text": chunk("a", finish=7),
    "usage-not-a-count": {"choices": [], "usage": {"prompt_tokens": "many"}},
    "usage-not-an-object": {"choices": [], "usage": [1]},
    "a-list": [1, 2, 3],
    "a-string": "hello",
    "not-json": "{this is not json",
    "huge-number": '{"choices": [], "usage": {"prompt_tokens": ' + "9" * 5000 + "}}",
    "an-error": {"error": {"message": "the GPU fell over"}},
}


@pytest.mark.parametrize("bad", list(MALFORMED_CHUNKS.values()), ids=list(MALFORMED_CHUNKS))
def test_a_malformed_chunk_is_a_generation_error_without_noise(manager, server, bad, capfd):
    server.serve("bad", events(chunk("ok "), bad, chunk("x", finish="stop")))
    register(manager, server, "bad")
    stream = manager.stream("bad", "Hi", max_new_tokens=20)
    error = failure(lambda: list(stream))
    assert server.url in str(error) and stream.text == "ok "
    stream = None  # its generators are finalized here: nothing may be printed
    gc.collect()
    assert "Exception ignored" not in capfd.readouterr().err
    assert "last call failed" in manager.row("bad").error
    server.behave["bad"] = events(chunk("fine", finish="stop"))  # the model stays usable
    assert "".join(manager.stream("bad", "Hi", max_new_tokens=5)) == "fine"
    assert manager.row("bad").error is None


def test_a_malformed_raw_completion_chunk_is_a_generation_error(manager, server):
    server.serve("raw", events({"choices": [{"index": 0, "text": {"x": 1}, "finish_reason": None}]}))
    register(manager, server, "raw")
    error = failure(lambda: list(manager.stream("raw", "Hi", raw=True, max_new_tokens=20)))
    assert "content is not text" in str(error)


MALFORMED_ANSWERS = {
    "int-content": completion(5),
    "object-content": completion({"x": 1}),
    "no-choices": {"choices": []},
    "message-not-an-object": {"choices": [{"message": None}]},
    "a-list": [1],
    "a-string": "hello",
    "not-json": "<html>gateway</html>",
    "finish-not-text": completion("hi", finish=["stop"]),
    "usage-negative": completion("hi", usage={"prompt_tokens": -1, "completion_tokens": 1}),
}


@pytest.mark.parametrize("bad", list(MALFORMED_ANSWERS.values()), ids=list(MALFORMED_ANSWERS))
def test_a_malformed_whole_answer_is_a_generation_error(manager, server, bad):
    server.serve("bad", answer(bad))
    register(manager, server, "bad")
    error = failure(lambda: manager.generate("bad", "Hi", max_new_tokens=5))
    assert server.url in str(error) and "not an OpenAI-compatible answer" in str(error)


# -- bounded messages -------------------------------------------------------------------------------

def test_a_server_with_100000_models_gives_a_short_error(manager):
    ids = [f"organisation/model-number-{index:06d}" for index in range(100_000)]
    with HostileServer(listed=ids) as server:
        register(manager, server, "missing")
        with pytest.raises(ModelLoadingError) as caught:
            manager.load("missing")
        message = str(caught.value)
        assert len(message) <= LIMIT and "does not serve 'missing'" in message and "99," in message
        assert "Set model: to one of those" in message
        assert len(manager.row("missing").error or "") <= LIMIT
        assert all(len(str(row)) < 5 * LIMIT for row in manager.status())
        register(manager, server, ids[-1], model_id="last")  # the last of them is found
        manager.load("last")


@pytest.mark.parametrize("body", [{"error": {"message": "overloaded " * 100_000}}, "<html>" + "x" * 1_000_000])
def test_a_huge_error_body_gives_a_short_error(manager, server, body):
    server.serve("huge", answer(body, status=500))
    register(manager, server, "huge")
    error = failure(lambda: manager.generate("huge", "Hi", max_new_tokens=5))
    assert "HTTP 500" in str(error)
    assert len(manager.row("huge").details["last_error"]) <= LIMIT


def test_a_huge_error_inside_a_stream_gives_a_short_error(manager, server):
    server.serve("huge", events({"error": {"message": "no " * 50_000}}))
    register(manager, server, "huge")
    error = failure(lambda: list(manager.stream("huge", "Hi", max_new_tokens=5)))
    assert "reported an error" in str(error)


@pytest.mark.parametrize("models", [answer("<html>" + "x" * 1_000_000 + "</html>"), answer({"data": 5}),
                                    answer({"error": {"message": "x" * 1_000_000}}, status=500)],
                         ids=["not-json", "not-a-list", "huge-error"])
def test_a_bad_model_list_gives_a_short_error(manager, server, models):
    server.models = models
    register(manager, server, "any")
    with pytest.raises(ModelLoadingError) as caught:
        manager.load("any")
    assert len(str(caught.value)) <= LIMIT and server.url in str(caught.value)


# -- each id's own timeout and retries ---------------------------------------------------------------

def test_two_ids_on_one_server_each_have_their_own_timeout(manager, server):
    server.serve("slow", after(3, answer(completion("late"))))
    register(manager, server, "slow", model_id="patient", timeout=30)
    register(manager, server, "slow", model_id="impatient", timeout=0.5)
    manager.load("patient")  # loaded first: its client must not serve the impatient id
    started = time.monotonic()
    error = failure(lambda: manager.generate("impatient", "Hi", max_new_tokens=5))
    assert "did not answer within 0.5 s" in str(error) and time.monotonic() - started < 2.5
    assert manager.generate("patient", "Hi", max_new_tokens=5).text == "late"
    assert manager.row("patient").instance != manager.row("impatient").instance
    register(manager, server, "slow", model_id="patient-too", timeout=30)  # the same settings share one client
    assert manager.row("patient-too").instance == manager.row("patient").instance


def test_two_ids_on_one_server_each_have_their_own_retries(manager, server):
    server.serve("flaky", failing(3, answer(completion("up"))))
    register(manager, server, "flaky", model_id="stubborn", max_retries=2)
    register(manager, server, "flaky", model_id="once", max_retries=0)
    manager.load("stubborn")
    assert "HTTP 503" in str(failure(lambda: manager.generate("once", "Hi", max_new_tokens=5)))
    assert server.requests["flaky"] == 1  # no retry for the id that asked for none
    assert manager.generate("stubborn", "Hi", max_new_tokens=5).text == "up"
    assert server.requests["flaky"] == 4  # one refused above; two refused, then served
