"""The openai backend against real llm-katan servers on 127.0.0.1 (skipped where llm-katan is not installed)."""

from __future__ import annotations

import _thread
import json
import logging
import shutil
import threading
from importlib.metadata import EntryPoint
from pathlib import Path

import psutil
import pytest
from jlm_helpers.remote_server import FaultProxy, kill_in_the_middle_of_a_stream, llm_katan

from jupyter_llm_manager import ConfigurationError, GenerationError, LLMManager, ModelLoadingError
from jupyter_llm_manager import backends as backends_module
from jupyter_llm_manager.backends import Backend, LoadedModel
from jupyter_llm_manager.generation import GenerationResult

KEY = "sk-test-4f9a1c77d2e0"


def never_stopping_copy(model: Path, folder: Path) -> Path:
    """A copy of ``model`` without an end-of-text token, so that it always writes ``max_tokens``.

    Random weights sample the end-of-text token now and then (about one 8-token answer in 40), and the
    tests count tokens exactly; real servers offer the same with ``ignore_eos``.
    """
    copy = Path(shutil.copytree(model, folder / model.name))
    for name in ("config.json", "generation_config.json"):
        settings = json.loads((copy / name).read_text())
        settings["eos_token_id"] = None
        (copy / name).write_text(json.dumps(settings))
    return copy


@pytest.fixture(scope="module")
def katan(tmp_path_factory, tiny_models):
    """llm-katan serving tiny model 'a' as 'tiny', checking the API key."""
    folder = tmp_path_factory.mktemp("katan")
    with llm_katan(folder, model=never_stopping_copy(tiny_models["a"], folder), key=KEY) as (url, _):
        yield url


@pytest.fixture
def manager(monkeypatch):
    monkeypatch.setenv("CLUSTER_KEY", KEY)
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


def register_remote(manager, url, model_id="remote", **options):
    options.setdefault("api_key", "${CLUSTER_KEY}")
    options.setdefault("model", "tiny")
    return manager.register(model_id, backend="openai", base_url=url, **options)


def test_generate_and_stream_through_the_chat_endpoint(manager, katan):
    register_remote(manager, katan)
    result = manager.generate("remote", "Hello", max_new_tokens=8, temperature=0)
    assert result.completion_tokens == 8 and result.prompt_tokens > 0 and isinstance(result.text, str)
    stream = manager.stream("remote", [{"role": "user", "content": "Hi"}], max_new_tokens=6)
    pieces = list(stream)
    assert pieces and "".join(pieces) == stream.result.text and stream.result.completion_tokens == 6
    row = manager.row("remote")
    assert row.remote and row.device == "remote" and row.state == "loaded"
    assert row.details["endpoint"] == katan and row.details["latency_str"].endswith("ms")
    assert row.details["last_error"] is None


def test_remote_models_hold_no_memory_and_are_never_evicted_for_budget_or_cap(manager, katan, tiny_models):
    register_remote(manager, katan)
    manager.register("local-a", source=str(tiny_models["a"]))
    manager.register("local-b", source=str(tiny_models["b"]))
    manager.max_loaded_models = 1
    manager.load("remote")
    manager.load("local-a")
    manager.load("local-b")  # the cap of 1 evicts local-a, not the remote model
    states = {row.id: row.state for row in manager.status()}
    assert states == {"remote": "loaded", "local-a": "registered", "local-b": "loaded"}
    assert manager.generate("local-b", "Hi", max_new_tokens=2, min_new_tokens=2).completion_tokens == 2
    assert manager.generate("remote", "Hi", max_new_tokens=2).completion_tokens == 2
    assert "remote" not in next(d for d in manager.devices() if d.device == "cpu").models
    assert manager.estimate("remote").total_bytes == 0


def test_an_unreachable_server_names_the_url(manager):
    port = 9  # discard: nothing listens there
    register_remote(manager, f"http://127.0.0.1:{port}/v1", max_retries=0, timeout=5)
    with pytest.raises(ModelLoadingError, match=rf"cannot reach the server at http://127.0.0.1:{port}/v1"):
        manager.load("remote")
    assert manager.row("remote").state == "failed"


def test_a_wrong_key_names_the_variable_never_a_value(manager, katan, monkeypatch, caplog):
    monkeypatch.setenv("CLUSTER_KEY", "sk-wrong-0000")
    register_remote(manager, katan)
    with caplog.at_level(logging.DEBUG), pytest.raises(ModelLoadingError) as caught:
        manager.load("remote")
    message = str(caught.value)
    assert "rejected the API key" in message and "${CLUSTER_KEY}" in message
    everything = message + repr(manager.row("remote")) + caplog.text + "".join(map(str, manager.events()))
    assert "sk-wrong-0000" not in everything and KEY not in everything


def test_an_unknown_model_lists_the_served_ones(manager, katan):
    register_remote(manager, katan, model="gpt-9")
    with pytest.raises(ModelLoadingError, match=r"does not serve 'gpt-9'; it serves: tiny"):
        manager.load("remote")


def test_raw_prompts_need_a_completion_endpoint(manager, katan):
    register_remote(manager, katan)
    with pytest.raises(GenerationError, match="no completion endpoint"):
        manager.generate("remote", "Hi", raw=True, max_new_tokens=2)
    assert "no completion endpoint" in manager.row("remote").details["last_error"]
    manager.generate("remote", "Hi", max_new_tokens=2)
    assert manager.row("remote").details["last_error"] is None


def test_transient_errors_are_retried_with_backoff(manager, katan):
    with FaultProxy(katan, failures=2, status=429) as proxy:
        register_remote(manager, proxy.url, max_retries=2)
        assert manager.generate("remote", "Hi", max_new_tokens=3).completion_tokens == 3
        assert len(proxy.requests) == 3  # two refused, one served
    with FaultProxy(katan, failures=10, status=503) as proxy:
        register_remote(manager, proxy.url, model_id="flaky", max_retries=1)
        with pytest.raises(GenerationError, match="HTTP 503"):
            manager.generate("flaky", "Hi", max_new_tokens=3)
        assert len(proxy.requests) == 2  # one try and one retry, then a clear error


def test_a_server_killed_in_the_middle_of_a_stream(manager, tmp_path):
    with llm_katan(tmp_path, extra=("--chunk-delay-ms", "200")) as (url, server):
        register_remote(manager, url, api_key="anything", max_retries=0, timeout=20)
        stream = manager.stream("remote", "one two three four five six seven eight nine ten " * 5,
                                max_new_tokens=200)
        assert kill_in_the_middle_of_a_stream(stream, server) < 15  # nothing hangs
        assert stream.text != "" and manager.row("remote").in_use == 0


def test_an_interrupt_stops_the_stream_and_closes_the_connection(manager, tmp_path):
    with llm_katan(tmp_path, extra=("--chunk-delay-ms", "100")) as (url, _server):
        register_remote(manager, url, api_key="anything")
        manager.load("remote")
        port = int(url.split(":")[2].split("/")[0])
        stream = manager.stream("remote", "word " * 200, max_new_tokens=200)
        with pytest.raises(KeyboardInterrupt):
            for index, _ in enumerate(stream):
                if index == 0:
                    threading.Timer(0.05, _thread.interrupt_main).start()
        assert stream.result.finish_reason == "interrupted" and manager.row("remote").in_use == 0
        open_to_server = [c for c in psutil.Process().net_connections("tcp")
                          if c.raddr and c.raddr.port == port and c.status == psutil.CONN_ESTABLISHED]
        assert open_to_server == []
        assert manager.generate("remote", "still there", max_new_tokens=2).completion_tokens >= 1


def test_the_magic_streams_a_remote_model(manager, katan, shell_with):
    from IPython.utils.capture import capture_output

    shell = shell_with(manager)
    register_remote(manager, katan)
    with capture_output() as captured:
        result = shell.run_cell("%%llm remote -n 5 -o remote_answer\nHello")
    assert result.error_in_exec is None and isinstance(shell.user_ns["remote_answer"], str)
    assert any("remote · 5 tokens" in o["data"].get("text/plain", "") for o in captured._outputs)


def test_a_missing_openai_package_is_a_clear_error(manager, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "openai" else real(name, *a))
    with pytest.raises(ConfigurationError, match=r"pip install 'jupyter_llm_manager\[remote\]'"):
        register_remote(manager, "http://127.0.0.1:1/v1")


def test_bad_base_urls(manager):
    for url in ("localhost:8000", "ftp://host/v1", "http://"):
        with pytest.raises(ConfigurationError, match="base_url"):
            register_remote(manager, url)


def test_different_keys_to_one_endpoint_are_different_instances(manager, katan, monkeypatch):
    register_remote(manager, katan)
    register_remote(manager, katan, model_id="other-key", api_key="sk-inline-different")
    assert manager.row("remote").instance != manager.row("other-key").instance
    assert "sk-inline-different" not in manager.row("other-key").instance


# -- third-party backends -----------------------------------------------------------------------

class ShoutBackend(Backend):
    """A third-party backend as a plugin author would write it."""

    name = "shout"
    remote = True

    def load(self, spec, placement):
        return LoadedModel(model=object(), details={"endpoint": "in-process"})

    def stream(self, loaded, prompt, params, *, model_id, raw, stop):
        text = (prompt if isinstance(prompt, str) else prompt[-1]["content"]).upper()
        yield text
        return GenerationResult(model_id, text, 1, 1, 0.0)


def test_third_party_backends_register_through_entry_points(manager, monkeypatch):
    point = EntryPoint("shout", f"{__name__}:ShoutBackend", backends_module.ENTRY_POINT_GROUP)
    monkeypatch.setattr(backends_module, "entry_points",
                        lambda group: [point] if group == backends_module.ENTRY_POINT_GROUP else [])
    monkeypatch.setattr(backends_module, "_instances", {})
    assert "shout" in backends_module.available_backends()
    manager.register("loud", "anything", backend="shout", options={"volume": 11})
    assert manager.generate("loud", "hello").text == "HELLO"
    with pytest.raises(ConfigurationError, match="unknown backend 'whisper'; available: .*shout"):
        manager.register("quiet", "x", backend="whisper")


# -- from a notebook: %llm register for a server, and a server that dies -------------------------------------

@pytest.fixture
def shell(manager, shell_with):
    return shell_with(manager)


def run_cell(shell, cell):
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        result = shell.run_cell(cell)
    return result, captured


def test_register_a_server_from_a_cell_with_a_key_reference(shell, manager, katan):
    result, captured = run_cell(shell, f"%llm register srv {katan} --backend openai --model tiny "
                                       "--api-key '${CLUSTER_KEY}'")
    assert result.error_in_exec is None and "Registered 'srv'" in str([o.data for o in captured.outputs])
    spec = manager.spec("srv")
    assert spec.base_url == katan and spec.model == "tiny" and spec.api_key.reference == "CLUSTER_KEY"
    result, captured = run_cell(shell, "%%llm srv -n 3 -o said\nHello")
    assert result.error_in_exec is None and isinstance(shell.user_ns["said"], str)
    run_cell(shell, f"%llm register srv2 --base-url {katan} --model tiny --api-key '${{{{CLUSTER_KEY}}}}'")
    assert manager.spec("srv2").backend == "openai" and manager.generate("srv2", "Hi", max_new_tokens=2).text


@pytest.mark.parametrize("line, secret", [
    ("%llm register srv {url} --backend openai --api-key sk-literal-key-0001", "sk-literal-key-0001"),
    ("%llm register srv http://user:pa55-in-url@127.0.0.1:9/v1 --backend openai", "pa55-in-url"),
    ("%llm register srv --base-url http://user:pa55-in-url@127.0.0.1:9/v1", "pa55-in-url"),
])
def test_literal_secrets_typed_in_a_cell_are_refused(shell, manager, line, secret):
    _result, captured = run_cell(shell, line.format(url="http://127.0.0.1:9/v1"))
    assert "UsageError" in captured.stderr and "saved with the notebook" in captured.stderr
    assert secret not in captured.stderr and "srv" not in manager.ids()


def test_a_server_that_dies_keeps_the_model_loaded_with_the_error_until_a_call_succeeds(manager, katan):
    with FaultProxy(katan, failures=0) as proxy:
        port = proxy.server.server_address[1]
        register_remote(manager, proxy.url, max_retries=0, timeout=5)
        assert manager.generate("remote", "Hi", max_new_tokens=2).text
        row = manager.row("remote")
        assert row.reachable is True and row.error is None
    with pytest.raises(GenerationError):  # the server is gone
        manager.generate("remote", "Hi", max_new_tokens=2)
    row = manager.row("remote")
    assert row.state == "loaded" and row.reachable is False
    assert row.error.startswith("last call failed at ") and "is the server still running" in row.error
    with FaultProxy(katan, failures=0, port=port):  # back
        assert manager.generate("remote", "Hi", max_new_tokens=2).text
        row = manager.row("remote")
        assert row.reachable is True and row.error is None
