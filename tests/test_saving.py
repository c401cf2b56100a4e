"""Saving the configuration: no model of another kernel lost to an editor writing in place, a change made
between the read and the rename merged again, and the user's comments, order and quoting kept."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import tracemalloc

import pytest
import yaml
from jlm_helpers.children import child, run_child
from jlm_helpers.conditions import until
from jlm_helpers.fakes import FakeClock
from test_hostile_input import bomb

from jupyter_llm_manager import ConfigurationError, LLMManager, ModelSpec
from jupyter_llm_manager.config import files, reading, round_trip
from jupyter_llm_manager.config.bounded_yaml import dump_yaml
from jupyter_llm_manager.config.files import load_config, save_config
from jupyter_llm_manager.config.reading import SETTLE_S, read_settled


def spec(model_id: str) -> ModelSpec:
    return ModelSpec.from_mapping(model_id, {"source": f"org/{model_id}"})


def others(count: int = 30) -> dict[str, ModelSpec]:
    return {f"theirs-{index}": spec(f"theirs-{index}") for index in range(count)}


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def manager_for():
    made = []

    def make(path):
        made.append(LLMManager(config_path=path, preload=False))
        return made[-1]

    yield make
    for manager in made:
        manager.close()


# -- 1. an editor rewriting the file in place ------------------------------------------------------------

class InPlaceEditor:
    """An editor saving ``text`` the way most do: truncate the file, then write it in pieces.

    It writes one piece each time this process has read the file (the hook on
    :func:`reading.snapshot` drives it), so the saving kernel meets the empty
    file, then each partial one, whatever the speed of the machine.
    """

    def __init__(self, path, text: str, pieces: int = 7) -> None:
        self.path = path
        size = -(-len(text) // pieces)
        self.pieces = [text[start:start + size] for start in range(0, len(text), size)]
        self.reads = 0
        self.seen: list[int] = []  # the size of the file at each read during the save

    def truncate(self) -> None:
        with open(self.path, "r+", encoding="utf-8") as handle:
            handle.truncate(0)

    def after_read(self, snapshot: reading.Snapshot) -> None:
        self.reads += 1
        self.seen.append(len(snapshot.raw or b""))
        if self.pieces:
            writer = threading.Thread(target=self._write_next)
            writer.start()
            writer.join(30)  # another thread, as another process would: written and flushed before the next read

    def _write_next(self) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(self.pieces.pop(0))
            handle.flush()


@pytest.mark.parametrize("attempt", range(3))
def test_an_editor_rewriting_the_file_in_place_loses_none_of_another_kernels_models(tmp_path, monkeypatch, attempt):
    path = tmp_path / "llm_manager.yaml"
    save_config(path, others(), {"chat": "theirs-0"})  # another kernel's 30 models
    editor = InPlaceEditor(path, path.read_text(), pieces=5 + attempt)
    original = reading.snapshot

    def read_then_let_the_editor_write(where):
        taken = original(where)
        editor.after_read(taken)
        return taken

    monkeypatch.setattr(reading, "snapshot", read_then_let_the_editor_write)
    editor.truncate()
    save_config(path, {"mine": spec("mine")}, {})
    saved = load_config(path)
    assert set(saved.models) == {*others(), "mine"} and saved.aliases == {"chat": "theirs-0"}
    assert editor.seen[0] == 0 and not editor.pieces  # it met the empty file, and waited for the whole one


def test_a_file_that_stays_empty_is_believed_once_it_stayed_so(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text("")
    clock = FakeClock()
    started = clock()
    assert read_settled(path, clock=clock, pause=clock.advance).data is None
    assert clock() - started >= SETTLE_S
    save_config(path, {"mine": spec("mine")}, {})
    assert set(load_config(path).models) == {"mine"}


def test_an_unparsable_file_is_read_again_before_it_is_an_error(tmp_path):
    path = tmp_path / "llm.yaml"
    path.write_text("models:\n  a: {source: org/a\n")  # a writer stopped in the middle
    clock = FakeClock()

    def finish_writing(seconds):
        clock.advance(seconds)
        if "}" not in path.read_text():
            path.write_text("models:\n  a: {source: org/a}\n")

    assert set(read_settled(path, clock=clock, pause=finish_writing).data["models"]) == {"a"}
    clock = FakeClock()
    started = clock()
    with pytest.raises(ConfigurationError, match="line 3"):  # one that stays broken is an error, in the end
        read_settled(_broken(tmp_path), clock=clock, pause=clock.advance)
    assert clock() - started >= SETTLE_S


def _broken(tmp_path):
    return write(tmp_path / "broken.yaml", "models:\n  a: {source: org/a\n")


def test_a_save_keeps_a_file_that_stays_broken_as_it_is(tmp_path):
    path = _broken(tmp_path)
    before = path.read_text()
    with pytest.raises(ConfigurationError, match="invalid YAML"):
        save_config(path, {"mine": spec("mine")}, {})
    assert path.read_text() == before


# -- 2. a change between the read and the rename -------------------------------------------------------

def test_a_change_between_the_read_and_the_rename_is_merged_again(tmp_path, monkeypatch):
    path = tmp_path / "llm.yaml"
    save_config(path, {"first": spec("first")}, {})
    merges = []
    original = files.merged_text

    def merge_while_someone_saves(*args, **kwargs):
        text = original(*args, **kwargs)
        merges.append(text)
        if len(merges) == 1:  # an editor (no lock) saves once we have read
            path.write_text(path.read_text() + "  edited: {source: org/edited}\n")
        return text

    monkeypatch.setattr(files, "merged_text", merge_while_someone_saves)
    save_config(path, {"mine": spec("mine")}, {})
    assert len(merges) == 2 and "edited" not in merges[0] and "edited" in merges[1]
    assert set(load_config(path).models) == {"first", "edited", "mine"}


def test_a_file_rewritten_at_every_save_is_a_clear_error(tmp_path, monkeypatch):
    path = tmp_path / "llm.yaml"
    save_config(path, {"first": spec("first")}, {})
    original = files.merged_text
    counter = iter(range(1000))

    def always_changed(*args, **kwargs):
        path.write_text(f"models:\n  other-{next(counter)}: {{source: org/other}}\n")
        return original(*args, **kwargs)

    monkeypatch.setattr(files, "merged_text", always_changed)
    with pytest.raises(ConfigurationError, match="changed 20 times while it was being saved"):
        save_config(path, {"mine": spec("mine")}, {})
    assert "mine" not in path.read_text()


def test_a_save_removes_only_what_this_process_removed(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", """\
        models:
          a: {source: org/a}
          b: {source: org/b}
        aliases: {to-a: a, to-b: b}
        """)
    mine = manager_for(path)
    save_config(path, {"c": spec("c")}, {"to-c": "c"})  # another kernel, after this one read the file
    mine.unregister("a")
    mine.register("d", source="org/d", persist=True)
    saved = load_config(path)
    assert set(saved.models) == {"b", "c", "d"} and saved.aliases == {"to-b": "b", "to-c": "c"}
    mine.save()  # everything this kernel knows: still nothing of the other kernel's removed
    assert set(load_config(path).models) == {"b", "c", "d"}


# -- 3. what the user wrote stays as written -----------------------------------------------------------

USER_FILE = """\
# My models: edited by hand
defaults:
  keep_alive: 30m   # half an hour

models:
  # the small one first
  zeta: {source: "org/zeta", dtype: fp16}   # quoted on purpose
  alpha:
    source: 'org/alpha'
    generation:
      temperature: 0.2   # cold

  # kept for comparisons
  old: {source: org/old}

aliases:
  chat: zeta   # the usual
"""


def test_comments_order_and_quoting_survive_persist_and_save(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", USER_FILE)
    manager = manager_for(path)
    manager.register("new", source="org/new", persist=True)
    assert path.read_text() == USER_FILE.replace(
        "  old: {source: org/old}\n",
        "  old: {source: org/old}\n  new:\n    source: org/new\n    backend: transformers\n")
    manager.alias("talk", "alpha", persist=True)
    assert path.read_text().endswith("  chat: zeta   # the usual\n  talk: alpha\n")
    before = path.read_text()
    manager.save()  # every model, alias and setting: all of them say what the file says already
    assert path.read_text() == before


def test_only_the_entry_that_changed_is_rewritten(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", USER_FILE)
    manager = manager_for(path)
    manager.register("alpha", source="org/alpha", generation={"temperature": 0.5}, overwrite=True)
    manager.unregister("old")
    manager.save()
    assert path.read_text() == USER_FILE.replace("temperature: 0.2", "temperature: 0.5").replace(
        "\n  # kept for comparisons\n  old: {source: org/old}\n", "\n  # kept for comparisons\n")
    assert load_config(path).models["alpha"].generation == {"temperature": 0.5}


def test_changed_settings_are_written_in_place_and_unchanged_ones_as_the_user_wrote_them(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", USER_FILE)
    manager = manager_for(path)
    manager.configure(max_loaded_models=3)
    manager.save()
    text = path.read_text()
    assert "  keep_alive: 30m   # half an hour\n  max_loaded_models: 3\n\nmodels:" in text
    assert text.startswith("# My models: edited by hand\n") and "wait_timeout" not in text
    assert LLMManager(config_path=path, preload=False).max_loaded_models == 3


def test_a_new_file_looks_like_our_layout(tmp_path):
    path = tmp_path / "new.yaml"
    save_config(path, {"b": spec("b"), "a": spec("a")}, {"chat": "a"}, defaults={"keep_alive": "30m"})
    expected = {"defaults": {"keep_alive": "30m"},
                "models": {"b": {"source": "org/b", "backend": "transformers"},
                           "a": {"source": "org/a", "backend": "transformers"}},
                "aliases": {"chat": "a"}}
    assert path.read_text() == dump_yaml(expected)


def test_a_comment_only_file_keeps_its_comments(tmp_path):
    path = write(tmp_path / "llm.yaml", "# models of the team\n# ask before adding one\n")
    save_config(path, {"a": spec("a")}, {})
    text = path.read_text()
    assert text.startswith("# models of the team\n# ask before adding one\n")
    assert set(load_config(path).models) == {"a"}


def test_an_anchored_entry_is_never_edited_through_its_alias(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", "models:\n  a: &base {source: org/a, dtype: bfloat16}\n  b: *base\n")
    manager = manager_for(path)
    manager.register("b", source="org/a", dtype="float16", overwrite=True)
    manager.save()
    saved = load_config(path).models
    assert saved["a"].dtype == "bfloat16" and saved["b"].dtype == "float16"


def test_a_literal_secret_in_the_file_is_not_kept_by_a_save(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", "models:\n  a:  # mine\n    source: org/a\n    token: hf_typed_in_clear\n")
    manager_for(path).save()
    text = path.read_text()
    assert "hf_typed_in_clear" not in text and "# mine" in text


def test_four_spaces_indentation_is_kept(tmp_path, manager_for):
    text = "models:\n    a:\n        source: org/a\n        device:\n          - cuda:0\n          - cuda:1\n"
    path = write(tmp_path / "llm.yaml", text)
    manager_for(path).register("b", source="org/b", persist=True)
    assert path.read_text().startswith(text) and "\n    b:\n        source: org/b\n" in path.read_text()


def test_a_large_file_is_saved_without_its_comments_and_says_so(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(round_trip, "ROUND_TRIP_MAX_BYTES", 200)
    path = write(tmp_path / "llm.yaml", USER_FILE)
    with caplog.at_level(logging.WARNING):
        save_config(path, {"new": spec("new")}, {})
    assert "rewritten without its comments" in caplog.text and "#" not in path.read_text()
    assert set(load_config(path).models) == {"zeta", "alpha", "old", "new"}


def test_the_hostile_file_protections_hold_for_a_save(tmp_path):
    text = bomb("options")
    path = write(tmp_path / "llm.yaml", text)
    tracemalloc.start()
    try:
        with pytest.raises(ConfigurationError, match="alias bomb"):
            save_config(path, {"mine": spec("mine")}, {})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000 and path.read_text() == text
    deep = write(tmp_path / "deep.yaml", "models: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigurationError, match="nest"):
        save_config(deep, {"mine": spec("mine")}, {})


def test_a_file_written_by_another_kernel_just_now_is_read_once_it_is_complete(tmp_path, monkeypatch):
    path = tmp_path / "llm.yaml"
    save_config(path, others(4), {})
    text = path.read_text()
    cut = text.index("  theirs-2:")  # a partial file that parses: half of the models
    editor = InPlaceEditor(path, text[cut:], pieces=2)
    path.write_text(text[:cut])
    original = reading.snapshot

    def read_then_let_the_editor_write(where):
        taken = original(where)
        editor.after_read(taken)
        return taken

    monkeypatch.setattr(reading, "snapshot", read_then_let_the_editor_write)
    save_config(path, {"mine": spec("mine")}, {})
    assert set(load_config(path).models) == {*others(4), "mine"}
    assert yaml.safe_load(path.read_text())["models"]["theirs-3"] == {"source": "org/theirs-3",
                                                                      "backend": "transformers"}


def test_a_file_that_never_stops_changing_fails_the_save_and_writes_nothing(tmp_path):
    path = write(tmp_path / "llm.yaml", "models:\n  a: {source: org/a}\n")
    clock = FakeClock()
    written = iter(range(10_000))

    def someone_keeps_writing(seconds):
        clock.advance(seconds)
        path.write_text(f"models:\n  a: {{source: org/a}}\n  b{next(written)}: {{source: org/b}}\n")

    started = clock()
    with pytest.raises(ConfigurationError, match="kept changing"):
        read_settled(path, clock=clock, pause=someone_keeps_writing)
    assert clock() - started >= reading.MAX_WAIT_S


def test_words_yaml_reads_as_booleans_keep_their_meaning(tmp_path, manager_for):
    path = write(tmp_path / "llm.yaml", "# team file\nmodels:\n  a:\n    source: org/a\n    trust_remote_code: yes\n")
    manager = manager_for(path)
    assert manager.spec("a").trust_remote_code is True
    manager.register("b", source="org/b", generation={"stop": ["no", "yes", "on", "1:30"]}, persist=True)
    text = path.read_text()
    assert text.startswith("# team file\n")
    saved = load_config(path).models
    assert saved["a"].trust_remote_code is True and saved["b"].generation["stop"] == ["no", "yes", "on", "1:30"]


def test_a_file_the_round_trip_parser_refuses_is_saved_plainly_with_nothing_lost(tmp_path, monkeypatch, caplog):
    from ruamel.yaml.error import YAMLError

    def refuse(*args, **kwargs):
        raise YAMLError("a construct it does not read")

    monkeypatch.setattr(round_trip.Document, "edit", refuse)
    path = write(tmp_path / "llm.yaml", USER_FILE)
    with caplog.at_level(logging.WARNING):
        save_config(path, {"new": spec("new")}, {})
    assert "comments cannot be kept" in caplog.text
    assert set(load_config(path).models) == {"zeta", "alpha", "old", "new"}


def test_a_file_that_opens_with_a_document_marker_keeps_it(tmp_path):
    path = write(tmp_path / "llm.yaml", "---\n# shared with the team\nmodels:\n  a: {source: org/a}\n")
    save_config(path, {"b": spec("b")}, {})
    assert path.read_text().startswith("---\n# shared with the team\nmodels:\n  a: {source: org/a}\n  b:\n")


# -- an in-place writer that stalls, in real processes (issue 31, item 7) -------------------------------------

WRITER = """
import sys, time
path, ready, cut, pause = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
text = open(path).read()
with open(path, "w") as handle:  # an editor saving in place: truncate, write, stall, write the rest
    handle.write(text[:cut])
    handle.flush()
    open(ready, "w").close()
    time.sleep(pause)
    handle.write(text[cut:])
"""

SAVER = """
import sys
from jupyter_llm_manager import ConfigurationError, ModelSpec
from jupyter_llm_manager.config.files import save_config
try:
    save_config(sys.argv[1], {"mine": ModelSpec.from_mapping("mine", {"source": "org/mine"})}, {})
    print("saved")
except ConfigurationError as error:
    print("refused:", error)
"""


@pytest.mark.parametrize("pause", [0.05, 0.15, 0.6, 1.5])
def test_a_stalled_in_place_write_by_another_process_loses_no_model(tmp_path, pause):
    """Another process rewrites the file in place and stalls after a first part that is valid YAML (15 of
    its 30 models); a save from a third process meanwhile waits for it, then merges: all 31 are there.
    (The old code dropped 15 models at every pause of 120 ms or more.)"""
    path, ready = tmp_path / "llm.yaml", tmp_path / "ready"
    save_config(path, others(30), {})
    text = path.read_text()
    cut = text.index("  theirs-15:")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ready), str(cut), str(pause)])
    until(ready.exists, timeout=30)
    saver = child([sys.executable, "-c", SAVER, str(path)], timeout=60)
    assert writer.wait(30) == 0
    assert saver.stdout.startswith("saved"), saver.stdout + saver.stderr
    assert set(load_config(path).models) == {*others(30), "mine"}


def test_a_writer_that_stalls_past_the_wait_makes_the_save_fail_and_keeps_its_file(tmp_path):
    path, ready = tmp_path / "llm.yaml", tmp_path / "ready"
    save_config(path, others(30), {})
    text = path.read_text()
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(ready), str(text.index("  theirs-15:")),
                               str(reading.MAX_WAIT_S + 1.5)])
    until(ready.exists, timeout=30)
    with pytest.raises(ConfigurationError, match="open for writing"):
        save_config(path, {"mine": spec("mine")}, {})
    assert writer.wait(30) == 0
    assert set(load_config(path).models) == set(others(30)) and path.read_text() == text


def test_a_fifo_as_the_configuration_is_refused_not_waited_on(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs here")
    path = tmp_path / "llm.yaml"
    os.mkfifo(path)
    answer = run_child(f"""
        import json
        from jupyter_llm_manager import ConfigurationError, LLMManager
        try:
            LLMManager(config_path={str(path)!r}, preload=False)
        except ConfigurationError as error:
            print(json.dumps({{"error": str(error)}}))
    """, timeout=60)
    assert "not a regular file" in answer["error"]


def test_an_edit_that_lands_in_the_file_being_replaced_is_merged_again(tmp_path, monkeypatch):
    """A writer that opened the file just before the rename writes just after it, into the replaced file:
    the save sees it there and merges it again, so the file ends with both."""
    path = tmp_path / "llm.yaml"
    save_config(path, others(3), {})
    real = os.replace
    renames = []

    def rename_while_someone_appends(source, target):
        renames.append(target)
        if len(renames) > 1 or os.fspath(target) != str(path):
            return real(source, target)
        with open(path, "a", encoding="utf-8") as late:  # opened before the rename, written after it
            real(source, target)
            late.write("  late: {source: org/late}\n")
        return None

    monkeypatch.setattr(os, "replace", rename_while_someone_appends)
    save_config(path, {"mine": spec("mine")}, {})
    assert len(renames) == 2  # the first version, then the one merged with the late edit
    assert set(load_config(path).models) == {*others(3), "late", "mine"}
