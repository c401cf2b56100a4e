"""The OpenAI-compatible routes over a fake Answering: every refusal, the answers' shapes, streams that wait,
fail or lose their client, and the bounds."""

from __future__ import annotations

import base64
import contextlib
import json
import struct

import httpx
import pytest
from jlm_helpers.conditions import until
from jlm_helpers.openai_fakes import FakeAnswering, FakeStream, running
from starlette.applications import Starlette

from jupyter_llm_manager.errors import (
    GenerationError,
    InvalidGenerationParameters,
    ModelLoadingError,
    ModelNotFoundError,
    ResourceNotAvailableError,
    WrongModelKind,
)
from jupyter_llm_manager.manager.sharing.openai_routes import HTTP_ERRORS, openai_routes
from jupyter_llm_manager.manager.sharing.protocol import EXTENSION

CHAT = {"model": "fake", "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def answering():
    return FakeAnswering()


@pytest.fixture
def served(answering):
    app = Starlette(routes=openai_routes(answering, heartbeat_s=0.05, max_running=2), exception_handlers=HTTP_ERRORS)
    with running(app) as url, httpx.Client(base_url=url, timeout=20) as client:
        yield client


def events(response: httpx.Response) -> list[str]:
    """The stream's lines that carry something (data events and comments), in order."""
    return [line for line in response.iter_lines() if line]


def data(lines: list[str]) -> list[dict | str]:
    return [line[6:] if line == "data: [DONE]" else json.loads(line[6:]) for line in lines if line.startswith("data: ")]


# -- refusals ----------------------------------------------------------------------------------------------------

BAD_CHATS = [
    ({"messages": CHAT["messages"]}, "model"),
    ({**CHAT, "model": ""}, "model"),
    ({**CHAT, "messages": []}, "messages"),
    ({**CHAT, "messages": "Hi"}, "messages"),
    ({**CHAT, "messages": ["Hi"]}, "messages[0]"),
    ({**CHAT, "messages": [{"role": "tool", "content": "x"}]}, "messages[0].role"),
    ({**CHAT, "messages": [{"role": "user", "content": 3}]}, "messages[0].content"),
    ({**CHAT, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
     "messages[0].content"),
    ({**CHAT, "n": 2}, "n"),
    ({**CHAT, "frequency_penalty": 0.5}, "frequency_penalty"),
    ({**CHAT, "presence_penalty": 1}, "presence_penalty"),
    ({**CHAT, "max_tokens": 0}, "max_tokens"),
    ({**CHAT, "max_completion_tokens": "many"}, "max_completion_tokens"),
    ({**CHAT, "temperature": "hot"}, "temperature"),
    ({**CHAT, "top_p": True}, "top_p"),
    ({**CHAT, "seed": -1}, "seed"),
    ({**CHAT, "top_k": 1.5}, "top_k"),
    ({**CHAT, "stop": [""]}, "stop"),
    ({**CHAT, "stop": 5}, "stop"),
    ({**CHAT, "stop": ["x"] * 17}, "stop"),
    ({**CHAT, "stream": "yes"}, "stream"),
    ({**CHAT, "stream": True, "stream_options": {"include_usage": "yes"}}, "stream_options"),
    ({**CHAT, "tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({**CHAT, "logprobs": True}, "logprobs"),
    ({**CHAT, "response_format": {"type": "json_object"}}, "response_format"),
    ({**CHAT, EXTENSION: "params"}, EXTENSION),
    ({**CHAT, "messages": [{"role": [], "content": "x"}]}, "messages[0].role"),  # not hashable: still a 400
    ({**CHAT, "messages": [{"role": {"a": 1}, "content": "x"}]}, "messages[0].role"),
    ({**CHAT, "n": True}, "n"),  # a JSON true is not the count 1
    ({**CHAT, "n": 1.5}, "n"),
    ({**CHAT, "frequency_penalty": True}, "frequency_penalty"),
    ({**CHAT, "temperature": -1}, "temperature"),  # ranges: GenerationParams says what, the field is named
    ({**CHAT, "top_p": 5}, "top_p"),
]


@pytest.mark.parametrize("body, param", BAD_CHATS)
def test_a_bad_chat_request_is_a_400_naming_the_field(served, answering, body, param):
    response = served.post("/v1/chat/completions", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["code"] is None and error["message"] and "\n" not in error["message"]
    assert error["type"] == "invalid_request_error"
    assert answering.requests == []  # nothing was asked of the model


@pytest.mark.parametrize("body, param", [
    ({"model": "fake", "prompt": [1, 2, 3]}, "prompt"),
    ({"model": "fake", "prompt": ["a", "b"]}, "prompt"),
    ({"model": "fake", "prompt": ""}, "prompt"),
    ({"model": "fake"}, "prompt"),
    ({"model": "fake", "prompt": "a", "echo": True}, "echo"),
    ({"model": "fake", "prompt": "a", "suffix": "b"}, "suffix"),
    ({"model": "fake", "prompt": "a", "best_of": 3}, "best_of"),
    ({"model": "fake", "prompt": "a", "best_of": True}, "best_of"),
])
def test_a_bad_completion_request_is_a_400(served, body, param):
    response = served.post("/v1/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


@pytest.mark.parametrize("body, param", [
    ({"model": "fake", "input": [[1, 2], [3]]}, "input"),
    ({"model": "fake", "input": [1, 2]}, "input"),
    ({"model": "fake", "input": None}, "input"),
    ({"model": "fake", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ({"model": "fake", "input": "a", "dimensions": 8}, "dimensions"),
    ({"input": "a"}, "model"),
])
def test_a_bad_embedding_request_is_a_400(served, body, param):
    response = served.post("/v1/embeddings", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == param


def test_a_path_or_method_no_route_takes_is_an_openai_error(served, answering):
    missing = served.post("/v1/responses", json=CHAT)
    assert missing.status_code == 404 and "/v1/chat/completions" in missing.json()["error"]["message"]
    wrong = served.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.json()["error"]["message"] == \
        "GET is not allowed on /v1/chat/completions: use POST" and wrong.headers["allow"] == "POST"
    assert answering.requests == []


def test_bodies_are_read_within_bounds(answering):
    with running(Starlette(routes=openai_routes(answering, max_body=1000))) as url:
        too_large = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "pad": "x" * 2000})
        not_json = httpx.post(f"{url}/v1/chat/completions", content=b"{not json")
        not_object = httpx.post(f"{url}/v1/chat/completions", json=[CHAT])
        deep = httpx.post(f"{url}/v1/chat/completions", content=b"[" * 100 + b"]" * 100)
    assert too_large.status_code == 413 and "at most 1000 bytes" in too_large.json()["error"]["message"]
    assert not_json.status_code == not_object.status_code == deep.status_code == 400
    assert not_json.json()["error"]["type"] == "invalid_request_error"
    assert answering.requests == []


# -- answers -----------------------------------------------------------------------------------------------------

def test_a_chat_answer_has_openais_shape_usage_and_the_result(served, answering):
    body = {**CHAT, "messages": [{"role": "developer", "content": "Be brief."},
                                 {"role": "user", "content": [{"type": "text", "text": "Hi"},
                                                              {"type": "text", "text": "there"}]}],
            "max_completion_tokens": 16, "max_tokens": 99, "temperature": 0.5, "top_p": 0.9, "seed": 3,
            "stop": "END", "top_k": 4, "repetition_penalty": 1.1, "frequency_penalty": 0, "user": "ignored",
            EXTENSION: {"params": {"max_new_tokens": 5}, "requester": "analysis.ipynb"}}
    answer = served.post("/v1/chat/completions", json=body).json()
    assert answer["object"] == "chat.completion" and answer["id"].startswith("chatcmpl-")
    assert answer["choices"] == [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                                  "logprobs": None, "finish_reason": "stop"}]
    assert answer["usage"] == {"prompt_tokens": 7, "completion_tokens": 2, "total_tokens": 9}
    assert answer[EXTENSION]["result"]["finish_reason"] == "stop"
    assert answer[EXTENSION]["result"]["max_new_tokens"] == 16
    asked = answering.requests[0]
    # a borrower's own messages (the extension carries its exact parameters): roles kept as its manager took them
    assert asked.prompt == [{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi\nthere"}]
    assert asked.raw is False
    assert dict(asked.params) == {"max_new_tokens": 16, "temperature": 0.5, "top_p": 0.9, "seed": 3,
                                  "stop": ["END"], "top_k": 4, "repetition_penalty": 1.1}
    assert dict(asked.extension) == body[EXTENSION] and asked.requester == "analysis.ipynb"


@pytest.mark.parametrize("ours, theirs", [("stop", "stop"), ("length", "length"), ("stop_string", "stop"),
                                          ("repetition", "stop"), ("interrupted", "stop")])
def test_finish_reasons_map_to_openais(served, answering, ours, theirs):
    answering.next_stream = FakeStream(finish=ours)
    answer = served.post("/v1/chat/completions", json=CHAT).json()
    assert answer["choices"][0]["finish_reason"] == theirs
    assert answer[EXTENSION]["result"]["finish_reason"] == ours


def test_a_completion_is_raw_and_a_text_completion(served, answering):
    answer = served.post("/v1/completions", json={"model": "fake", "prompt": ["Once upon"], "max_tokens": 8}).json()
    assert answer["object"] == "text_completion" and answer["choices"][0]["text"] == "Hello"
    assert answering.requests[0].prompt == "Once upon" and answering.requests[0].raw is True
    assert answering.requests[0].params == {"max_new_tokens": 8}
    assert answering.requests[0].requester.startswith("a client (python-httpx")


def test_a_borrowers_extension_says_whether_a_string_prompt_is_raw(served, answering):
    body = {"model": "fake", "prompt": "Hi", EXTENSION: {"raw": False, "params": {"max_new_tokens": 3}}}
    served.post("/v1/completions", json=body)
    assert answering.requests[0].raw is False and answering.requests[0].prompt == "Hi"


def test_models_are_listed(served):
    assert served.get("/v1/models").json() == {"object": "list", "data": FakeAnswering().models()}
    assert served.get("/v1/models/fake").json()["id"] == "fake"
    assert served.get("/v1/models/other").status_code == 404


def test_base64_embeddings_decode_to_the_float_ones(served, answering):
    texts = ["one", "two", "three"]
    floats = served.post("/v1/embeddings", json={"model": "fake", "input": texts}).json()
    packed = served.post("/v1/embeddings", json={"model": "fake", "input": texts, "encoding_format": "base64"}).json()
    assert floats["object"] == "list" and floats["usage"] == {"prompt_tokens": 0, "total_tokens": 0}
    assert [item["index"] for item in floats["data"]] == [0, 1, 2]
    for plain, encoded in zip(floats["data"], packed["data"]):
        raw = base64.b64decode(encoded["embedding"])
        decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
        assert decoded == pytest.approx(plain["embedding"], rel=1e-6)
    one = served.post("/v1/embeddings", json={"model": "fake", "input": "alone"}).json()
    assert len(one["data"]) == 1 and answering.embedded[-1] == ("fake", ["alone"])


# -- errors from the answering part ------------------------------------------------------------------------------

@pytest.mark.parametrize("error, status", [
    (ModelNotFoundError("nope"), 404), (InvalidGenerationParameters("top_k too large"), 400),
    (ResourceNotAvailableError("no room"), 503), (GenerationError("broke"), 500), (RuntimeError("a bug"), 500),
    (WrongModelKind("'fake' is an embedding model"), 400)])
@pytest.mark.parametrize("stream", [False, True])
def test_an_error_before_the_first_piece_is_an_http_error(served, answering, error, status, stream):
    answering.raises = error
    response = served.post("/v1/chat/completions", json={**CHAT, "stream": stream})
    assert response.status_code == status
    assert response.json()["error"]["type"] == type(error).__name__
    assert response.json()["error"]["message"] == str(error)
    assert (response.headers.get("retry-after") is not None) == (status == 503)


def test_a_stream_failing_before_its_first_piece_is_an_http_error(served, answering):
    answering.next_stream = stream = FakeStream([], fail=ModelLoadingError("the file is damaged"))
    response = served.post("/v1/chat/completions", json={**CHAT, "stream": True})
    assert response.status_code == 500 and response.json()["error"]["type"] == "ModelLoadingError"
    assert until(stream.closed.is_set, timeout=5)


def test_an_embedding_error_is_an_http_error(served, answering):
    answering.raises = GenerationError("model 'fake' makes no embeddings")
    response = served.post("/v1/embeddings", json={"model": "fake", "input": "a"})
    assert response.status_code == 500 and response.json()["error"]["type"] == "GenerationError"


# -- streams -----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("include_usage", [False, True])
def test_a_stream_is_server_sent_chunks_ending_done(served, answering, include_usage):
    answering.next_stream = FakeStream(["Hel", "lo", " world"], finish="length")
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": include_usage}}
    with served.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        chunks = data(events(response))
    assert chunks[-1] == "[DONE]"
    chunks = chunks[:-1]
    assert {chunk["object"] for chunk in chunks} == {"chat.completion.chunk"}
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    usage = chunks.pop() if include_usage else None
    final = chunks.pop()
    assert final["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    assert final[EXTENSION]["result"]["completion_tokens"] == 3
    assert "".join(chunk["choices"][0]["delta"]["content"] for chunk in chunks) == "Hello world"
    assert all(chunk["choices"][0]["finish_reason"] is None for chunk in chunks)
    if include_usage:
        assert usage["choices"] == [] and usage["usage"] == {"prompt_tokens": 7, "completion_tokens": 3,
                                                             "total_tokens": 10}


def test_a_completion_stream_is_text_completion_chunks(served, answering):
    with served.stream("POST", "/v1/completions", json={"model": "fake", "prompt": "Once", "stream": True}) as response:
        chunks = data(events(response))
    assert chunks[-1] == "[DONE]"
    assert {chunk["object"] for chunk in chunks[:-1]} == {"text_completion"}
    assert "".join(chunk["choices"][0]["text"] for chunk in chunks[:-1]) == "Hello"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"


def test_a_silent_stream_sends_keep_alive_comments_until_pieces_come(served, answering):
    answering.next_stream = stream = FakeStream(["slow", " answer"], gated=True)
    seen: list[str] = []
    with served.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200  # the stream began while no piece had come
        for line in response.iter_lines():
            if not line:
                continue
            seen.append(line)
            if seen.count(": keep-alive") == 3 and stream.made == 0:
                stream.release(2)
    assert seen.count(": keep-alive") >= 3
    pieces = [chunk for chunk in data(seen) if chunk != "[DONE]" and chunk["choices"]]
    assert "".join(chunk["choices"][0]["delta"].get("content", "") for chunk in pieces) == "slow answer"
    assert seen[-1] == "data: [DONE]"


def test_the_openai_client_reads_a_stream_with_keep_alive_comments_and_an_error_event(served, answering):
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=str(served.base_url).rstrip("/") + "/v1", api_key="none", max_retries=0)
    answering.next_stream = stream = FakeStream(["slow", " answer"], gated=True)
    chunks = client.chat.completions.create(model="fake", messages=CHAT["messages"], stream=True)
    first = next(iter(chunks))  # the role chunk, then a keep-alive comment: the stream began before any piece
    assert first.choices[0].delta.role == "assistant"
    stream.release(2)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == "slow answer"
    answering.next_stream = FakeStream(["partial"], fail=GenerationError("the holder went away"))
    with pytest.raises(openai.APIError, match="the holder went away"):
        list(client.chat.completions.create(model="fake", messages=CHAT["messages"], stream=True))


def test_a_client_that_leaves_stops_its_generation_within_a_moment(served, answering):
    answering.next_stream = stream = FakeStream(["tick "], endless=True, gated=True)
    stream.release(3)
    with served.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        for line in response.iter_lines():
            if "tick" in line:
                break
    assert until(stream.stopped.is_set, timeout=5), "the generation was not stopped"
    assert until(stream.closed.is_set, timeout=5), "the stream was not closed"


def test_a_client_that_leaves_a_whole_answer_stops_it_too(served, answering):
    answering.next_stream = stream = FakeStream(["tick "], endless=True, gated=True)
    with pytest.raises(httpx.ReadTimeout):
        served.post("/v1/chat/completions", json=CHAT, timeout=0.3)
    assert until(stream.stopped.is_set, timeout=5) and until(stream.closed.is_set, timeout=5)


def test_an_error_after_the_stream_began_is_an_error_event_without_done(served, answering):
    answering.next_stream = FakeStream(["partial"], fail=GenerationError("the holder went away"))
    with served.stream("POST", "/v1/chat/completions", json={**CHAT, "stream": True}) as response:
        assert response.status_code == 200
        lines = events(response)
    assert "data: [DONE]" not in lines
    last = json.loads(lines[-1][6:])
    assert last == {"error": {"message": "the holder went away", "type": "GenerationError", "code": None,
                              "param": None}}


# -- bounds ------------------------------------------------------------------------------------------------------

def test_generations_beyond_the_limit_get_503_with_retry_after(served, answering):
    waiting = [FakeStream(gated=True), FakeStream(gated=True)]
    with contextlib.ExitStack() as streams:
        responses = []
        for stream in waiting:
            answering.next_stream = stream
            responses.append(streams.enter_context(served.stream("POST", "/v1/chat/completions",
                                                                 json={**CHAT, "stream": True})))
        answering.next_stream = None
        refused = served.post("/v1/chat/completions", json=CHAT)
        assert refused.status_code == 503 and refused.headers["retry-after"].isdigit()
        assert refused.json()["error"]["type"] == "ResourceNotAvailableError"
        for stream, response in zip(waiting, responses):
            stream.release(2)
            assert data(events(response))[-1] == "[DONE]"
    assert until(lambda: served.post("/v1/chat/completions", json=CHAT).status_code == 200, timeout=5)


def test_a_generation_is_stopped_at_the_wall_limit(answering):
    answering.next_stream = stream = FakeStream(["tick "], endless=True, gated=True)
    with running(Starlette(routes=openai_routes(answering, heartbeat_s=0.05, max_seconds=0.3))) as url:
        answer = httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=20).json()
    assert stream.stopped.is_set()
    assert answer[EXTENSION]["result"]["finish_reason"] == "interrupted"
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_an_answer_that_starts_after_its_request_was_cancelled_is_ended_and_its_slot_given_back(answering):
    """The server stopping while a generation starts (its request cancelled): once it has started it is stopped
    and closed, and its slot is free again."""
    import asyncio
    import threading

    answering.start_gate = threading.Event()
    answering.next_stream = stream = FakeStream(endless=True)
    app = Starlette(routes=openai_routes(answering, max_running=1))

    async def cancelled_while_starting() -> None:
        body = [{"type": "http.request", "body": json.dumps(CHAT).encode(), "more_body": False}]

        async def receive():
            return body.pop(0) if body else await asyncio.sleep(3600)

        async def send(message):
            pass

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions",
                 "query_string": b"", "headers": [(b"content-type", b"application/json")], "http_version": "1.1",
                 "scheme": "http", "root_path": "", "server": ("127.0.0.1", 80), "client": ("127.0.0.1", 5)}
        task = asyncio.ensure_future(app(scope, receive, send))
        while not answering.requests:
            await asyncio.sleep(0.01)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    asyncio.run(cancelled_while_starting())
    answering.start_gate.set()
    assert until(stream.closed.is_set, timeout=10) and stream.stopped.is_set()
    answering.next_stream = None
    with running(app) as url:  # the one slot is free: the next request is answered, not told to come back later
        assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, timeout=20).status_code == 200
