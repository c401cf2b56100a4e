"""A clean first run: settings that survive a save, new and broken config files, the import race, quiet loads."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from jlm_helpers.fakes import FakeBackend, FakeDevices

from jupyter_llm_manager import LLMManager
from jupyter_llm_manager.config.settings import SETTING_NAMES, ManagerSettings
from jupyter_llm_manager.errors import ConfigurationError
from jupyter_llm_manager.manager import kernel as manager_module

ROOT = Path(__file__).resolve().parent.parent

# A value other than the default for every setting; a new setting must be added here (the test checks it).
CHANGED = {"max_loaded_models": 3, "memory_fraction": 0.55, "memory_budget": {"cpu": 8_000_000_000},
           "keep_alive": 125.0, "default_model": "m", "wait_timeout": 33.0, "max_queue": 7,
           "max_memory_per_model": 40_000_000_000, "cooperate": False, "ledger_path": "/tmp/another-ledger.sqlite",
           "max_loaded_adapters": 3, "max_context_auto_limit": 4096, "share": False, "borrow_timeout": 12.0}


# -- item 3: save writes every setting -----------------------------------------------------------------

def test_the_changed_values_cover_every_setting_and_differ_from_the_defaults():
    assert set(CHANGED) == set(SETTING_NAMES)
    defaults = ManagerSettings()
    assert all(getattr(defaults, name) != value for name, value in CHANGED.items())


@pytest.mark.parametrize("start", ["new file", "existing file"])
def test_every_setting_and_pin_survives_save_and_reload(tmp_path, start):
    path = tmp_path / "llm.yaml"
    if start == "existing file":
        path.write_text("defaults: {max_loaded_models: 1, keep_alive: 10m}\nmodels:\n  m: {source: org/m}\n")
    manager = LLMManager(config_path=path, preload=False)
    try:
        if start == "new file":
            manager.register("m", source="org/m")
        manager.register("n", source="org/n")
        manager.configure(**CHANGED)
        manager.pin("n")
        manager.save()
    finally:
        manager.close()
    again = LLMManager(config_path=path, preload=False)
    try:
        assert {name: getattr(again.settings, name) for name in SETTING_NAMES} == CHANGED
        assert again.row("n").pinned and not again.row("m").pinned
    finally:
        again.close()
    saved = yaml.safe_load(path.read_text())
    assert set(saved["defaults"]) == set(SETTING_NAMES)


def test_unlimited_settings_are_saved_and_read_back(tmp_path):
    manager = LLMManager(config_path=False, preload=False, max_loaded_models=None, keep_alive="never",
                         wait_timeout=float("inf"))
    try:
        path = manager.save(tmp_path / "llm.yaml")
    finally:
        manager.close()
    saved = yaml.safe_load(path.read_text())["defaults"]
    assert saved["keep_alive"] == "never" and saved["wait_timeout"] == "never" and saved["max_loaded_models"] is None
    again = LLMManager(config_path=path, preload=False)
    try:
        assert again.wait_timeout == float("inf") and again.keep_alive == float("inf")
    finally:
        again.close()


def test_default_model_has_one_home(tmp_path, make_manager, shell_with):
    manager = make_manager()
    manager.register("m", "fake/m", backend="fake")
    shell = shell_with(manager)
    with capture_output():
        shell.run_line_magic("llm", "default m")
    assert manager.default_model == "m" == manager.settings.default_model
    assert yaml.safe_load(manager.save(tmp_path / "s.yaml").read_text())["defaults"]["default_model"] == "m"


def test_a_default_model_that_names_nothing_is_refused_where_it_is_set(make_manager, shell_with):
    manager = make_manager()
    manager.register("chat", "fake/chat", backend="fake")
    manager.alias("c", "chat")
    with pytest.raises(ConfigurationError, match=r"'chatt' names no model.*did you mean 'chat'"):
        manager.configure(default_model="chatt")
    with pytest.raises(ConfigurationError, match="did you mean 'chat'"):
        manager.default_model = "Chat"
    assert manager.default_model is None  # nothing changed
    shell = shell_with(manager)
    with capture_output() as captured:
        shell.run_cell("%llm default chatt")
    assert "id you mean 'chat'" in captured.stderr and len(captured.stderr.strip().splitlines()) == 1
    assert manager.default_model is None
    for valid in ("chat", "c", "smollm2"):  # an id, an alias, the built-in model
        manager.default_model = valid
        assert manager.default_model == valid


def test_a_config_files_default_model_may_name_its_own_later_models_aliases_tasks_or_the_builtin(tmp_path):
    models = ("models:\n  later: {source: org/later}\naliases: {fast: later}\n"
              "tasks:\n  summarize:\n    selected: small\n    options:\n"
              "      small: {model_id: org/small, framework: pytorch, vram_gb: 1}\n")
    for default in ("later", "fast", "summarize", "summarize/small", "smollm2"):
        path = tmp_path / f"{default.replace('/', '-')}.yaml"
        path.write_text(f"defaults: {{default_model: {default}}}\n{models}")  # settings come before models
        assert LLMManager(config_path=path, preload=False).default_model == default
    path = tmp_path / "typo.yaml"
    path.write_text(f"defaults: {{default_model: latter}}\n{models}")
    with pytest.raises(ConfigurationError, match=r"typo.yaml.*'latter' names no model.*did you mean 'later'"):
        LLMManager(config_path=path, preload=False)
    manager = LLMManager(config_path=False, preload=False)
    with pytest.raises(ConfigurationError, match="did you mean 'later'"):
        manager.read_config(path)
    assert manager.ids() == [] and manager.default_model is None  # the file changed nothing


# -- item 4: config files that do not exist yet, or are broken ---------------------------------------------

def fresh_extension(monkeypatch):
    """A shell where the extension loads as in a new kernel (no manager yet)."""
    monkeypatch.setattr(manager_module, "_singleton", None)
    shell = InteractiveShell.instance()
    shell.run_line_magic("unload_ext", "jupyter_llm_manager")
    return shell


def test_a_config_named_through_the_environment_that_does_not_exist_yet(tmp_path, monkeypatch):
    path = tmp_path / "new" / "llm.yaml"
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(path))
    shell = fresh_extension(monkeypatch)
    with capture_output() as captured:
        shell.run_line_magic("load_ext", "jupyter_llm_manager")
        shell.run_line_magic("llm", f"register m {tmp_path} --persist")
    try:
        assert captured.stderr == "" and "llm" in shell.magics_manager.magics["line"]
        assert path.exists() and "m:" in path.read_text()
    finally:
        shell.run_line_magic("unload_ext", "jupyter_llm_manager")
        monkeypatch.setattr(manager_module, "_singleton", None)


def test_a_broken_config_is_one_line_and_the_magics_still_load(tmp_path, monkeypatch):
    path = tmp_path / "llm.yaml"
    path.write_text("models:\n  m: {source: org/m, dtype: fp17}\n")
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(path))
    shell = fresh_extension(monkeypatch)
    try:
        with capture_output() as captured:
            shell.run_line_magic("load_ext", "jupyter_llm_manager")
        assert "Traceback" not in captured.stderr and "unknown dtype" in captured.stderr
        assert captured.stderr.count("\n") <= 2 and "llm" in shell.magics_manager.magics["cell"]
        with capture_output() as captured:
            shell.run_cell("%%llm\nhello")
        assert "UsageError" in captured.stderr and "unknown dtype" in captured.stderr
        path.write_text("models:\n  m: {source: org/m, dtype: float16}\n")  # fixed
        shell.run_line_magic("reload_ext", "jupyter_llm_manager")
        with capture_output() as captured:
            shell.run_line_magic("llm", "list")
        assert "org/m" in str([o.data for o in captured.outputs])
    finally:
        shell.run_line_magic("unload_ext", "jupyter_llm_manager")
        monkeypatch.setattr(manager_module, "_singleton", None)


# -- items 1 and 6: the first import of torch races no thread, and is reported apart ------------------------

RACE = textwrap.dedent("""
    import json, sys, threading, comm
    from jupyter_llm_manager import LLMManager
    from jupyter_llm_manager.frontends.lab_bridge import LabBridge

    class Frontend(comm.DummyComm):
        def publish_msg(self, *args, **kwargs):
            pass

    manager = LLMManager(config_path=False, preload=False)
    manager.register("m", source=sys.argv[1])
    bridge = LabBridge(manager)
    bridge.attach()
    channel = Frontend(target_name="jupyter_llm_manager", primary=False)
    comm.get_comm_manager().register_comm(channel)
    bridge._on_open(channel, {})  # a JupyterLab tab is connected: every event pushes a snapshot from a timer
    stop = threading.Event()
    def watch():  # the dashboard's writer does the same, about every two seconds
        while not stop.is_set():
            manager.devices()
    watcher = threading.Thread(target=watch)
    watcher.start()
    assert "torch" not in sys.modules
    loaded = []
    manager.subscribe(lambda e: loaded.append(e.message) if e.kind == "loaded" else None)
    manager.load("m")
    manager.unload("m")
    manager.load("m")
    stop.set()
    watcher.join()
    row = manager.row("m")
    bridge.detach()
    print(json.dumps({"messages": loaded, "import": row.import_seconds}))
""")


@pytest.mark.slow
def test_no_thread_ever_sees_a_half_imported_torch_in_twenty_fresh_processes(tiny_models, tmp_path):
    script = tmp_path / "race.py"
    script.write_text(RACE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "default"}

    def run(_):
        return subprocess.run([sys.executable, str(script), str(tiny_models["a"])], check=False,
                              capture_output=True, text=True, timeout=300, env=env)

    with ThreadPoolExecutor(2) as pool:
        runs = list(pool.map(run, range(20)))
    for done in runs:
        assert done.returncode == 0, done.stderr[-2000:]
        assert "Traceback" not in done.stderr and "partially initialized" not in done.stderr, done.stderr[-2000:]
        assert "Exception in thread" not in done.stderr
    report = yaml.safe_load(runs[0].stdout.strip().splitlines()[-1])
    first, second = report["messages"]
    assert "imported torch" in first and "imported" not in second  # the import is named once, apart
    assert report["import"] is None  # the second load (the row now) paid for no import


# -- item 7: the library's own progress bars stay out of cells ------------------------------------------

def test_a_managed_load_shows_no_library_progress_bar(real_manager, shell_with):
    import transformers

    shell = shell_with(real_manager)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot enable progress bars")  # the tests' environment
        transformers.utils.logging.enable_progress_bar()
    with capture_output() as captured:
        shell.run_cell("%%llm a -n 2 -p min_new_tokens=2\nHi")
    everything = captured.stdout + captured.stderr + str([o.data for o in captured.outputs])
    assert "Loading weights" not in everything and "%|" not in everything
    assert transformers.utils.logging.is_progress_bar_enabled()  # turned back on after the load


def test_a_slow_load_shows_its_elapsed_time_in_the_status_line(shell_with):
    backend = FakeBackend(FakeDevices())
    manager = LLMManager(config_path=False, preload=False, device_probe=backend.devices,
                         backend_factory=lambda name: backend)
    manager.register("slow", "fake/slow", backend="fake", options={"size": 1})
    entered, release = backend.gate("slow")
    shell = shell_with(manager)
    outputs: list = []

    def release_when_shown():
        assert entered.wait(10)
        deadline = time.monotonic() + 20
        while not any("loading slow… " in str(o) for o in list(outputs)) and time.monotonic() < deadline:
            threading.Event().wait(0.05)
        release.set()

    helper = threading.Thread(target=release_when_shown)
    helper.start()
    try:
        with capture_output() as captured:
            outputs = captured._outputs
            shell.run_cell("%%llm slow\nhello")
        helper.join(30)
        assert any("loading slow… " in str(o) for o in captured._outputs)
        final = [o for o in captured._outputs if "font-size: smaller" in str(o)][-1]["data"]["text/plain"]
        assert "loading slow" not in final and "loaded slow" in final  # the progress note is gone once loaded
    finally:
        release.set()
        manager.close()


# -- items 9 and 12: what the magics say and show --------------------------------------------------------

def test_an_unknown_model_in_a_cell_says_what_to_type(shell_with, make_manager):
    manager = make_manager()
    manager.register("gpt-5", "fake/x", backend="fake")
    shell = shell_with(manager)
    with capture_output() as captured:
        shell.run_cell("%%llm gpt-4\nhello")
    assert "No model is registered as 'gpt-4'" in captured.stderr and "Did you mean 'gpt-5'?" in captured.stderr
    with capture_output() as captured:
        shell.run_cell("%%llm claude\nhello")
    assert "%llm register ID SOURCE" in captured.stderr and "%llm list" in captured.stderr
    assert "register(id" not in captured.stderr and captured.stderr.count("\n") == 1


def test_list_keeps_ids_on_one_line_and_long_sources_wrap(shell_with, make_manager):
    manager = make_manager()
    manager.register("a-rather-long-model-id-name", "org/" + "x" * 150, backend="fake")
    shell = shell_with(manager)
    with capture_output() as captured:
        shell.run_line_magic("llm", "list")
    html = captured.outputs[0].data["text/html"]
    assert "white-space: nowrap'>a-rather-long-model-id-name" in html and "overflow-wrap: anywhere'>org/xxx" in html
