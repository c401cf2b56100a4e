"""Notebooks are named short everywhere (relative to the Jupyter root, else to the home folder), full path on hover."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, fake

from jupyter_llm_manager.frontends import machine_reader
from jupyter_llm_manager.frontends.lab_bridge import LabBridge
from jupyter_llm_manager.frontends.views.machine import machine_tables
from jupyter_llm_manager.support import names as naming
from jupyter_llm_manager.support.names import (
    footer_names,
    message_name,
    notebook_names,
    published_name,
    remember_server_root,
    server_root,
)


def test_a_name_is_relative_to_the_root_else_to_the_home_folder_and_keeps_its_full_path():
    assert published_name("/home/me/work/a.ipynb", home="/home/me") == "~/work/a.ipynb"
    assert published_name("/srv/a.ipynb", home="/home/me") == "/srv/a.ipynb"
    assert published_name("/home/meme/a.ipynb", home="/home/me") == "/home/meme/a.ipynb"  # not inside it
    names = ["~/work/a/report.ipynb", "~/work/b/report.ipynb", "/srv/c.ipynb", "pid 12", "train.py", "d/e.ipynb"]
    shown = notebook_names(names, home="/home/me")
    assert [shown[n].shown for n in names] == names  # two report.ipynb read apart by their folders
    assert shown["~/work/a/report.ipynb"].full == "/home/me/work/a/report.ipynb"
    rooted = notebook_names(names, root="/home/me/work", home="/home/me")
    assert [rooted[n].shown for n in names] == ["a/report.ipynb", "b/report.ipynb", "/srv/c.ipynb", "pid 12",
                                                "train.py", "d/e.ipynb"]
    assert rooted["d/e.ipynb"].full == "/home/me/work/d/e.ipynb"  # a relative path is the root's


def test_messages_and_footers_name_notebooks_relative_to_the_root_once_it_is_known(home):
    members = {"m1": "~/work/proj/analysis.ipynb", "m2": "~/work/a/report.ipynb", "m3": "~/work/b/report.ipynb",
               "m4": "pid 12", "m5": "/srv/other.ipynb"}
    assert message_name("~/work/proj/analysis.ipynb") == "~/work/proj/analysis.ipynb"  # no root known: as published
    assert footer_names(members) == {"m1": "analysis.ipynb", "m2": "~/work/a/report.ipynb",
                                     "m3": "~/work/b/report.ipynb", "m4": "pid 12", "m5": "other.ipynb"}
    remember_server_root(str(home / "work"))
    assert message_name("~/work/proj/analysis.ipynb") == "proj/analysis.ipynb"
    assert message_name("/srv/other.ipynb") == "/srv/other.ipynb"  # outside the root: its whole path
    assert footer_names(members) == {"m1": "proj/analysis.ipynb", "m2": "a/report.ipynb", "m3": "b/report.ipynb",
                                     "m4": "pid 12", "m5": "other.ipynb"}


def test_a_message_between_notebooks_names_the_asker_relative_to_the_root(notebooks, home):
    remember_server_root(str(home / "work"))
    asker, holder = notebooks
    (member,) = [k.member for k in asker.machine().kernels if not k.this]
    assert asker.ask_to_unload(member, "two") == "unloaded 'two' for a/report.ipynb: 1.0 GB freed"
    (event,) = [e for e in holder.events(None) if e.kind == "unloaded"]
    assert event.message == "for a/report.ipynb"


def test_the_root_is_what_the_kernels_path_has_beyond_the_notebooks_path_in_jupyterlab():
    assert server_root("/home/me/work/sub/a.ipynb", "sub/a.ipynb") == "/home/me/work"
    assert server_root("/a.ipynb", "a.ipynb") == "/"
    for session, path in (("/home/me/work/sub/a.ipynb", "other/a.ipynb"), ("sub/a.ipynb", "sub/a.ipynb"),
                          ("/home/me/xsub/a.ipynb", "sub/a.ipynb"), ("/home/me/a.ipynb", "")):
        assert server_root(session, path) is None


@pytest.fixture
def home(tmp_path, monkeypatch):
    folder = tmp_path / "home"
    folder.mkdir()
    monkeypatch.setenv("HOME", str(folder))
    monkeypatch.setattr(naming, "_root", None)  # no JupyterLab told this kernel its root yet
    return folder


@pytest.fixture
def notebooks(make_manager, home, monkeypatch):
    """Two notebooks' managers that share a file name, under the home folder, each with a model loaded."""
    made = []
    for folder, model_id in (("a", "one"), ("b", "two")):
        monkeypatch.setenv("JPY_SESSION_NAME", str(home / "work" / folder / "report.ipynb"))
        manager = make_manager(clock=time.monotonic)  # a wait for the other's load in flight ends on its own
        fake(manager, model_id, GB)
        manager.load(model_id)
        made.append(manager)
    monkeypatch.delenv("JPY_SESSION_NAME")
    until(lambda: len(made[0].machine().models) == 2)
    return made


def test_every_list_of_notebooks_reads_short_and_tells_two_of_a_name_apart(notebooks, home, tmp_path):
    report = notebooks[0].machine()
    assert {k.notebook for k in report.kernels} == {"~/work/a/report.ipynb", "~/work/b/report.ipynb"}
    kernels, models = machine_tables(report)[:2]
    shown = repr(kernels) + repr(models)
    assert "~/work/a/report.ipynb (this one)" in shown and "~/work/b/report.ipynb" in shown
    assert str(home) not in shown  # no absolute path
    assert f"title='{home}/work/b/report.ipynb'" in models.html()  # the full path on hover
    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_llm_manager")
    try:
        shell.magics_manager.registry["LLMMagics"].manager = notebooks[0]
        with capture_output() as captured:
            shell.run_line_magic("llm", "status --all")
    finally:
        shell.run_line_magic("unload_ext", "jupyter_llm_manager")
    text = "\n".join(output.data.get("text/plain", "") for output in captured.outputs)
    assert "~/work/b/report.ipynb" in text and str(home) not in text


def test_jupyterlab_tells_the_root_and_the_panel_names_notebooks_relative_to_it(notebooks, home, monkeypatch):
    monkeypatch.setenv("JPY_SESSION_NAME", str(home / "work" / "a" / "report.ipynb"))
    bridge = LabBridge(notebooks[0])
    try:
        bridge._on_open(_Channel(), {"content": {"data": {"action": "refresh", "path": "a/report.ipynb"}}})
        assert machine_reader.server_root() == str(home / "work")
        (other,) = bridge.snapshot()["machine"]["models"]
    finally:
        bridge.detach()
    assert other["notebook"] == "b/report.ipynb" and other["path"] == str(home / "work" / "b" / "report.ipynb")
    assert other["cells"]["notebook"] == {"text": "b/report.ipynb", "title": other["path"]}


class _Channel:
    """A comm as the bridge uses it, that keeps nothing."""

    def send(self, data):
        pass

    def on_msg(self, callback):
        pass

    def on_close(self, callback):
        pass

    def close(self):
        pass


def test_ps_fits_the_terminals_width_without_cutting_a_name(notebooks, home, tmp_path):
    env = {**os.environ, "COLUMNS": "60", "JUPYTER_CONFIG_DIR": str(tmp_path / "config")}
    code = "from jupyter_llm_manager.frontends.cli import main; main(['ps'])"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines and all(len(line) <= 60 for line in lines if "share" not in line and "ledger" not in line), lines
    assert "~/work/a/report.ipynb" in done.stdout and "~/work/b/report.ipynb" in done.stdout
    assert str(home) not in done.stdout and "2 managers on this machine share" in done.stdout
    wide = subprocess.run([sys.executable, "-c", code], env={**env, "COLUMNS": "200"}, capture_output=True,
                          text=True, timeout=120, check=False)
    assert any("pid" in line and "kernel" in line for line in wide.stdout.splitlines())  # every column when wide
