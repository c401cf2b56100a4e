"""Hostile and malformed input: bounded cost, clear errors naming file, model and key, no secret echoed."""

from __future__ import annotations

import itertools
import logging
import tracemalloc

import comm
import pytest
import yaml
from IPython.utils.capture import capture_output

from jupyter_llm_manager import ConfigurationError, LLMManager
from jupyter_llm_manager.config.bounded_yaml import MAX_DEPTH, load_yaml
from jupyter_llm_manager.config.files import load_config
from jupyter_llm_manager.frontends.lab_bridge import LabBridge

LOL = ", ".join(['"lol"'] * 9)


def bomb(place: str, levels: str = "abcdefghi") -> str:
    """The 'billion laughs' (9 levels: 9^9 values once expanded), anchored in one model, used by another."""
    lines = [f"a: &a [{LOL}]"] + [f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in itertools.pairwise(levels)]
    anchors = "".join(f"      {line}\n" for line in lines)
    source = "" if place == "source" else "    source: org/victim\n"
    return f"models:\n  anchors:\n    source: org/anchors\n    options:\n{anchors}  victim:\n{source}    {place}: *i\n"


def write(tmp_path, text, name="llm.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def refused(path) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    return str(caught.value)


# -- 1. the alias bomb ----------------------------------------------------------------------------

@pytest.mark.parametrize("place", ["source", "generation", "load_kwargs", "options"])
def test_an_alias_bomb_is_refused_before_it_expands(tmp_path, place):
    path = write(tmp_path, bomb(place))
    assert len(path.read_bytes()) < 1200
    tracemalloc.start()
    try:
        message = refused(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert str(path) in message and "alias" in message and "1,000,000" in message
    assert peak < 5_000_000  # the bomb expands to 387 million values; nothing near that was built


def test_aliases_within_bounds_still_work(tmp_path):
    path = write(tmp_path, "models:\n  a: &base {source: org/a, dtype: bfloat16}\n  b: *base\n")
    config = load_config(path)
    assert config.models["b"].source == "org/a" and config.models["b"].dtype == "bfloat16"


def test_a_recursive_alias_is_refused(tmp_path):
    assert "recursive alias" in refused(write(tmp_path, "models: &m {a: *m}\n"))


def test_values_given_in_python_are_bounded_too():
    nested: list = ["x"]
    for _ in range(8):
        nested = [nested] * 10  # 10^8 values through shared references
    manager = LLMManager(config_path=False, preload=False)
    try:
        with pytest.raises(ConfigurationError, match="too large"):
            manager.register("big", source="org/big", options={"payload": nested})
        with pytest.raises(ConfigurationError) as caught:
            manager.register("big", source=nested)
        assert len(str(caught.value)) < 400  # its repr is never expanded into the message
    finally:
        manager.close()


# -- 2. type and value edges -------------------------------------------------------------------------

@pytest.mark.parametrize("entry, key", [("required_memory: .inf", "required_memory"),
                                        ("required_memory: -.inf", "required_memory"),
                                        ("max_context: .inf", "max_context"),
                                        ("keep_alive: .nan", "keep_alive")])
def test_infinite_and_nan_values_are_clear_errors_naming_file_model_and_key(tmp_path, entry, key):
    path = write(tmp_path, f"models:\n  m:\n    source: org/m\n    {entry}\n")
    message = refused(path)
    assert str(path) in message and "model 'm'" in message and key in message


@pytest.mark.parametrize("entry", ["memory_budget: .inf", "memory_budget: {cuda:0: .inf}", "keep_alive: .nan",
                                   "wait_timeout: .nan", "memory_fraction: .nan", "max_queue: .inf"])
def test_bad_defaults_are_clear_errors(tmp_path, entry):
    path = write(tmp_path, f"defaults:\n  {entry}\n")
    message = refused(path)
    assert str(path) in message and f"defaults.{entry.split(':')[0]}" in message


def test_a_nan_remote_timeout_is_refused(tmp_path):
    path = write(tmp_path, "models:\n  r:\n    backend: openai\n    base_url: http://127.0.0.1:9/v1\n"
                           "    timeout: .nan\n")
    message = refused(path)
    assert "model 'r'" in message and "timeout" in message


@pytest.mark.parametrize("style", ["flow", "block"])
def test_deep_nesting_is_refused_without_a_crash(tmp_path, style):
    depth = 10_000 if style == "flow" else 2_000
    text = ("models: " + "[" * depth + "]" * depth + "\n" if style == "flow"
            else "".join(" " * i + "- \n" for i in range(depth)))
    message = refused(write(tmp_path, text))
    assert "nest" in message and "line" in message


def test_nesting_up_to_the_limit_is_fine():
    assert load_yaml("[" * MAX_DEPTH + "]" * MAX_DEPTH) is not None


@pytest.mark.parametrize("written, shown", [("null", "None"), ("true", "True"), ("1", "1"), ("2.5", "2.5")])
def test_model_ids_that_yaml_reads_as_other_types_must_be_quoted(tmp_path, written, shown):
    message = refused(write(tmp_path, f"models:\n  {written}: {{source: org/m}}\n"))
    assert "quote it" in message and shown in message


def test_a_quoted_id_with_a_trailing_newline_is_refused(tmp_path):
    assert "not a valid model id" in refused(write(tmp_path, 'models:\n  "chat\\n": {source: org/m}\n'))
    manager = LLMManager(config_path=False, preload=False)
    try:
        with pytest.raises(ConfigurationError, match="not a valid model id"):
            manager.register("chat\n", source="org/m")
        with pytest.raises(ConfigurationError, match="not a valid model id"):
            manager.alias("x\n", "chat") if "chat" in manager.ids() else manager.alias("x\n", "y")
    finally:
        manager.close()


@pytest.mark.parametrize("text, lines", [
    ("models:\n  a: {source: org/a}\n  a: {source: org/b}\n", "lines 2 and 3"),
    ("models:\n  a:\n    source: org/a\n    dtype: float16\n    dtype: bfloat16\n", "lines 4 and 5"),
    ("defaults: {keep_alive: 1m, keep_alive: 2m}\n", "lines 1 and 1"),
])
def test_a_key_written_twice_is_refused_naming_both_lines(tmp_path, text, lines):
    message = refused(write(tmp_path, text))
    assert "appears twice" in message and lines in message


# -- 3. secrets of the wrong type -----------------------------------------------------------------

@pytest.mark.parametrize("entry, secret", [
    ("api_key: 31415926535897932", "31415926535897932"),
    ("api_key: [hunter2-secret, other]", "hunter2-secret"),
    ("headers: 'Bearer sk-live-0123456789'", "sk-live-0123456789"),
    ("headers: {Authorization: 271828182845904}", "271828182845904"),
    ("headers: {Authorization: [Bearer, sk-list-98765]}", "sk-list-98765"),
])
def test_a_secret_of_the_wrong_type_is_never_echoed(tmp_path, entry, secret, caplog):
    caplog.set_level(logging.DEBUG)
    path = write(tmp_path, f"models:\n  r:\n    backend: openai\n    base_url: http://127.0.0.1:9/v1\n    {entry}\n")
    message = refused(path)
    assert "model 'r'" in message and "not shown" in message
    assert secret not in message and secret not in caplog.text


def test_a_token_in_load_kwargs_is_a_secret(tmp_path, caplog):
    manager = LLMManager(config_path=False, preload=False)
    try:
        spec = manager.register("m", source="org/m", load_kwargs={"token": "hf_literal_0123456789", "foo": 1})
        saved = manager.save(tmp_path / "saved.yaml").read_text()
        shown = repr(spec) + str(spec.to_mapping()) + saved + caplog.text + repr(manager.status())
        assert "hf_literal_0123456789" not in shown and "foo" in saved
        manager.register("n", source="org/n", load_kwargs={"token": "${HF_TOKEN}"})
        assert "${HF_TOKEN}" in manager.save(tmp_path / "saved.yaml").read_text()
    finally:
        manager.close()


def test_credentials_in_a_base_url_are_a_secret(tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    manager = LLMManager(config_path=False, preload=False)
    try:
        spec = manager.register("r", backend="openai", base_url="http://user:s3cr3t-pa55@127.0.0.1:9/v1")
        saved = manager.save(tmp_path / "saved.yaml").read_text()
        row = manager.row("r")
        shown = repr(spec) + row.instance + repr(row) + saved + caplog.text
        assert "s3cr3t-pa55" not in shown and "127.0.0.1:9/v1" in saved
        other = manager.register("r2", backend="openai", base_url="http://user:other-pass@127.0.0.1:9/v1")
        assert other.instance_key != spec.instance_key  # other credentials: another client
    finally:
        manager.close()


def test_a_literal_key_warns_once_when_saved_and_never_from_repr(tmp_path, caplog):
    manager = LLMManager(config_path=False, preload=False)
    try:
        spec = manager.register("r", backend="openai", base_url="http://127.0.0.1:9/v1", api_key="sk-inline")
        for _ in range(5):
            repr(spec)
        assert "given in clear" not in caplog.text
        manager.save(tmp_path / "a.yaml")
        manager.save(tmp_path / "b.yaml")
        assert caplog.text.count("given in clear") == 1
    finally:
        manager.close()


# -- 4. %%llm -o VAR ---------------------------------------------------------------------------------

@pytest.fixture
def shell(echo_manager, shell_with):
    return shell_with(echo_manager)


@pytest.fixture
def echo_manager(make_manager):
    manager = make_manager()
    manager.register("echo", "fake/echo", backend="fake", options={"size": 1})
    return manager


@pytest.mark.parametrize("name", ["__builtins__", "In", "Out", "_", "__", "___", "_3", "_i3", "_ih", "_oh", "_dh",
                                  "_i", "get_ipython", "exit", "quit", "1x", "a.b", "class", "__name__", "x-y"])
def test_output_names_that_would_break_the_notebook_are_refused(shell, name):
    before = shell.user_ns.get(name)
    with capture_output() as captured:
        shell.run_cell(f"%%llm echo -o {name}\nhello")
    assert "UsageError" in captured.stderr and "-o" in captured.stderr
    assert shell.user_ns.get(name) is before
    with capture_output():
        result = shell.run_cell("1 + 1")  # and the next cell still runs
    assert result.result == 2


def test_a_plain_output_name_works(shell):
    with capture_output():
        shell.run_cell("%%llm echo -o answer_text\nhello there")
    assert shell.user_ns["answer_text"] == "hello there"


# -- 5. format-spec widths ----------------------------------------------------------------------------

@pytest.mark.parametrize("field", ["{x:>200000000}", "{x:.99999999f}", "{x:0200000000d}", "{x:" + "9" * 5000 + "}"])
def test_a_huge_format_width_is_a_clear_error(shell, field):
    shell.user_ns["x"] = 7
    with capture_output() as captured:
        shell.run_cell(f"%%llm echo -o out\n{field}")
    assert "limited to 10,000" in captured.stderr and len(captured.stderr) < 500


def test_widths_within_the_limit_are_applied(shell):
    shell.user_ns["x"] = 7
    with capture_output():
        shell.run_cell("%%llm echo -o out\n[{x:>5}] [{x:.2f}]")
    assert shell.user_ns["out"] == "[    7] [7.00]"


# -- 6. malformed lab-bridge messages -------------------------------------------------------------------

class Channel(comm.DummyComm):
    def __init__(self, *args, **kwargs):
        self.received: list = []
        super().__init__(*args, **kwargs)

    def publish_msg(self, msg_type, data=None, metadata=None, buffers=None, **keys):
        if msg_type == "comm_msg":
            self.received.append(data)


@pytest.mark.parametrize("message", [
    {"content": {"data": ["unload", "a"]}}, {"content": None}, None, "unload", 42, {"content": {"data": None}},
    {"content": {"data": {"action": None}}}, {"content": {"data": {"action": ["unload"]}}},
    {"content": {"data": {"action": "unload", "model": {"id": "a"}}}},
    {"content": {"data": {"action": "unload", "request": "r" * 10_000}}},
])
def test_every_malformed_lab_message_is_answered_ok_false(make_manager, monkeypatch, caplog, message):
    manager = make_manager()
    monkeypatch.setattr(comm, "create_comm", lambda *a, **k: Channel(*a, **k))
    bridge = LabBridge(manager)
    bridge.attach()
    try:
        channel = Channel(target_name="jupyter_llm_manager", primary=False)
        comm.get_comm_manager().register_comm(channel)  # as the kernel's comm_open handler does
        bridge._on_open(channel, {})
        caplog.set_level(logging.INFO)
        channel.handle_msg(message)
        (answer,) = [m for m in channel.received if m.get("type") == "result"]
        assert answer["ok"] is False and answer["message"] and len(str(answer)) < 1000
        assert "Traceback" not in caplog.text
    finally:
        bridge.detach()


# -- 7. large files with the C loader ------------------------------------------------------------------

def test_the_c_loader_and_dumper_are_used_when_available():
    from jupyter_llm_manager.config import bounded_yaml as yaml_io

    if getattr(yaml, "__with_libyaml__", False):
        assert yaml_io._Loader is yaml.CSafeLoader and yaml_io._Dumper is yaml.CSafeDumper


def test_unsafe_tags_are_refused(tmp_path):
    message = refused(write(tmp_path, "models:\n  m: !!python/object/apply:os.system [echo pwned]\n"))
    assert "invalid YAML" in message


def test_a_big_file_is_refused_before_it_is_read(tmp_path):
    path = tmp_path / "huge.yaml"
    with path.open("w") as handle:
        handle.seek(17 * 1024 * 1024)
        handle.write("\n")
    assert "larger than 16 MB" in refused(path)


def test_two_thousand_models_load_and_save(tmp_path):
    text = "models:\n" + "".join(f"  m{i}: {{source: org/m{i}, dtype: bfloat16}}\n" for i in range(2000))
    path = write(tmp_path, text)
    manager = LLMManager(config_path=path, preload=False)
    try:
        assert len(manager.ids()) == 2000
        manager.save()
        assert len(load_config(path).models) == 2000
    finally:
        manager.close()


def test_escape_sequences_reach_the_answer_but_never_a_terminal_or_a_plain_output(make_manager):
    """An answer, an id's source or an error may carry ANSI/OSC sequences: shown text drops them, .text keeps them."""
    import io

    from jlm_helpers.fakes import fake

    from jupyter_llm_manager.frontends.notebook.rendering import TextAnswerView
    from jupyter_llm_manager.frontends.views.table import Table

    manager = make_manager()
    fake(manager, "echo", 1, source="org/\x1b]0;pwned\x07model")
    hostile = "red \x1b[31malert\x1b[0m \x1b]8;;http://evil\x1b\\link\x1b]8;;\x1b\\ end\x07"
    result = manager.generate("echo", hostile)
    assert result.text == hostile  # the answer itself is never changed
    out = io.StringIO()
    view = TextAnswerView(["echo"], "text", stream=out)
    view.add("echo", result.text)
    view.finish("echo", result)
    table = repr(Table(["id", "source"], [["echo", manager.spec("echo").location]]))
    for shown in (out.getvalue(), table):
        assert "\x1b" not in shown and "\x07" not in shown
    assert "red alert link end" in out.getvalue() and "org/0;pwnedmodel" not in table


def test_a_huge_backend_error_is_a_bounded_excerpt_everywhere_it_is_shown(make_manager, backend, monkeypatch):
    from jlm_helpers.fakes import fake

    from jupyter_llm_manager import ModelLoadingError

    huge = "x" * 10_000_000 + " what to do"

    def load(spec, placement):
        raise ModelLoadingError(f"{spec.id!r} could not load: {huge}", model_id=spec.id)

    monkeypatch.setattr(backend, "load", load)
    manager = make_manager()
    fake(manager, "m")
    with pytest.raises(ModelLoadingError) as caught:
        manager.load("m")
    assert len(str(caught.value)) <= 500 and str(caught.value).endswith("what to do")
    failed = [e for e in manager.events() if e.kind == "load_failed"]
    assert failed and all(len(e.message) <= 500 for e in failed)
    assert len(manager.row("m").error) <= 500 and len(repr(manager.status())) < 5000
