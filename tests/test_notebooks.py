"""Every notebook in notebooks/ runs top to bottom offline, twice in a fresh HOME, with nothing alarming in it.

The first run builds the caches a newcomer's first run builds; the second
runs with them present (where background threads once raced the first
import of torch). No output of either run may hold an error, a traceback, a
warning or a replacement character.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from jupyter_llm_manager.cli import _output_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
ALARMING = re.compile(r"Traceback|WARNING|Warning:|Exception ignored|Error:|\ufffd")


def run_notebook(notebook: Path, home: Path, output: Path) -> nbformat.NotebookNode:
    """Execute with nbclient (the quickstart command's executor) in a kernel whose HOME is ``home``."""
    env = {**os.environ, "HOME": str(home), "JUPYTER_CONFIG_DIR": str(home / ".jupyter"),
           "XDG_CACHE_HOME": str(home / ".cache"), "HF_HUB_OFFLINE": "1"}
    for name in ("JUPYTER_LLM_MANAGER_CONFIG", "HF_HUB_DISABLE_PROGRESS_BARS"):
        env.pop(name, None)
    script = ("import sys, nbformat\nfrom nbclient import NotebookClient\n"
              "nb = nbformat.read(sys.argv[1], as_version=4)\n"
              "NotebookClient(nb, timeout=300, kernel_name='python3', resources={'metadata': {'path': sys.argv[3]}})"
              ".execute()\nnbformat.write(nb, sys.argv[2])\n")
    done = subprocess.run([sys.executable, "-c", script, str(notebook), str(output), str(notebook.parent)],
                          check=False, env=env, capture_output=True, text=True, timeout=900, cwd=home)
    assert done.returncode == 0, done.stderr[-3000:]
    return nbformat.read(output, as_version=4)


def alarming(executed: nbformat.NotebookNode) -> list[str]:
    """Every output that shows an error, a traceback, a warning, stderr text or a replacement character."""
    found = []
    for index, cell in enumerate(executed.cells):
        for output in cell.get("outputs", []):
            text = _output_text(output)
            if output.output_type == "error" or output.get("name") == "stderr" or ALARMING.search(text):
                found.append(f"cell {index}: {output.output_type} {output.get('name', '')}: {text[:300]}")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, list[nbformat.NotebookNode]]:
    """Each notebook run twice in its own fresh HOME (first run, then with the caches present)."""
    executed = {}
    for notebook in NOTEBOOKS:
        home = tmp_path_factory.mktemp(f"home-{notebook.stem}")
        executed[notebook.stem] = [run_notebook(notebook, home, home / f"run{n}.ipynb") for n in (1, 2)]
    return executed


def texts(executed: nbformat.NotebookNode) -> list[str]:
    return ["\n".join(_output_text(o) for o in cell.get("outputs", []))
            for cell in executed.cells if cell.cell_type == "code"]


def test_the_four_notebooks_are_there():
    assert [n.name for n in NOTEBOOKS] == ["compare.ipynb", "config.ipynb", "memory.ipynb", "quickstart.ipynb"]
    for notebook in NOTEBOOKS:
        markdown = "".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown")
        assert "Qwen/Qwen2.5" in markdown  # each shows the lines for a real Hub model


@pytest.mark.parametrize("name", [n.stem for n in NOTEBOOKS])
def test_nothing_alarming_in_any_output_of_either_run(runs, name):
    first, second = runs[name]
    assert alarming(first) == [] and alarming(second) == []


def test_quickstart(runs):
    outputs = texts(runs["quickstart"][1])
    text = "\n".join(outputs)
    assert "loaded demo-small" in text and "tok/s" in text
    assert "random weights: their answers are noise" in text and text.count("answers are noise") == 1
    assert "characters:" in text  # -o stored the answer
    assert "Models" in text and "keep-alive left" in text and "Devices" in text
    assert "[an interactive widget" in outputs[-1]


def test_memory(runs):
    text = "\n".join(texts(runs["memory"][1]))
    assert "evicted 'demo-small' (budget)" in text
    assert "Cannot load 'demo-small': not enough memory" in text and "(pinned)" in text
    assert "unloaded after being idle: True" in text
    assert "held by variable 'kept'" in text and "No unloaded model is still alive" in text


def test_config(runs):
    outputs = texts(runs["config"][1])
    text = "\n".join(outputs)
    listing = next(o for o in outputs if "Registered models" in o)
    ids = [line.split()[0] for line in listing.splitlines()[3:] if line.strip()]
    assert ids == ["small", "large", "cluster"]  # the file's models; the demo placeholders made way
    assert "scratch:" in text and "${CLUSTER_KEY}" in text
    assert "remote" in text


def test_compare(runs):
    text = "\n".join(texts(runs["compare"][1]))
    assert "── demo-small ──" in text and "── demo-large ──" in text
    assert "demo-small" in text and "characters" in text
    assert text.count("answers are noise") <= 1  # the demo note once, not once per model


def test_quickstart_command_three_times_in_one_fresh_home(tmp_path):
    env = {**os.environ, "HOME": str(tmp_path), "JUPYTER_CONFIG_DIR": str(tmp_path / ".jupyter"),
           "XDG_CACHE_HOME": str(tmp_path / ".cache"), "HF_HUB_OFFLINE": "1"}
    env.pop("JUPYTER_LLM_MANAGER_CONFIG", None)
    command = Path(sys.executable).with_name("jupyter-llm-manager")
    for _ in range(3):
        done = subprocess.run([str(command), "quickstart"], check=False, env=env, capture_output=True, text=True,
                              timeout=600, cwd=tmp_path)
        shown = done.stdout + done.stderr
        assert done.returncode == 0, shown[-3000:]
        assert not ALARMING.search(shown), ALARMING.search(shown)
