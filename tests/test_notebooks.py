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

from jupyter_llm_manager.frontends.cli import _output_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
WIDGET = "application/vnd.jupyter.widget-view+json"
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
    """Every output that shows an error, a traceback, a warning, stderr text, a replacement character,
    or a widget where none was asked for (a library's progress bar is a widget in a notebook).

    A cell tagged ``raises-exception`` may show one thing on stderr: the one-line ``UsageError`` it
    demonstrates (its stream may arrive in pieces)."""
    found = []
    for index, cell in enumerate(executed.cells):
        outputs = cell.get("outputs", [])
        stderr = "".join(o.text for o in outputs if o.output_type == "stream" and o.get("name") == "stderr")
        refusal = ("raises-exception" in cell.metadata.get("tags", ()) and stderr.startswith("UsageError: ")
                   and stderr.rstrip("\n").count("\n") == 0 and "Traceback" not in stderr)
        for output in outputs:
            text = _output_text(output)
            if refusal and output.get("name") == "stderr":
                continue
            stray_widget = WIDGET in output.get("data", {}) and "dashboard" not in cell.source
            if output.output_type == "error" or output.get("name") == "stderr" or ALARMING.search(text) \
                    or stray_widget:
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


def test_the_notebooks_are_there():
    assert [n.name for n in NOTEBOOKS] == ["compare.ipynb", "config.ipynb", "memory.ipynb", "quickstart.ipynb",
                                           "tiers.ipynb"]
    for notebook in NOTEBOOKS:
        markdown = "".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown")
        assert "Qwen/Qwen2.5" in markdown  # each shows the lines for a real Hub model


@pytest.mark.slow
@pytest.mark.parametrize("name", [n.stem for n in NOTEBOOKS])
def test_nothing_alarming_in_any_output_of_either_run(runs, name):
    first, second = runs[name]
    assert alarming(first) == [] and alarming(second) == []


def test_quickstart(runs):
    outputs = texts(runs["quickstart"][1])
    text = "\n".join(outputs)
    assert "The capital of Japan is Tokyo" in text  # a real answer, from the built-in smollm2
    assert "loaded smollm2" in text and "tok/s" in text
    assert "Red" in text and "Blue" in text and "Yellow" in text and "characters:" in text  # -o kept it
    assert re.search(r"\b4\b", outputs[6])  # {numbers[0]} + {numbers[1]} reached the model as 2 + 2
    assert "answers are noise" not in text  # no random-weight model answers in the quickstart
    assert "Models" in text and "keep-alive left" in text and "Devices" in text
    assert "[an interactive widget" in outputs[-1]


def test_memory(runs):
    text = "\n".join(texts(runs["memory"][1]))
    assert "evicted 'demo-small' (budget)" in text
    assert "Cannot load 'demo-small': not enough memory" in text and "(pinned)" in text
    assert "unloaded after being idle: True" in text
    assert "held by variable 'kept'" in text and "No unloaded model is still alive" in text
    chosen = int(re.search(r"context chosen: (\d+) tokens", text).group(1))
    assert chosen >= 512 and chosen % 256 == 0  # max_context: auto
    assert text.count("(estimated") == 3  # each buffer measured beside its estimate


def test_config(runs):
    outputs = texts(runs["config"][1])
    text = "\n".join(outputs)
    listing = next(o for o in outputs if "Registered models" in o)
    ids = [line.split()[0] for line in listing.splitlines()[3:] if line.strip()]
    assert ids == ["smollm2", "writer", "vectors", "cluster"]  # the built-in stays beside the file's models
    assert "The capital of Japan is Tokyo" in text
    related, unrelated = map(float, re.findall(r"cosine (-?[\d.]+)", text))
    assert related > unrelated
    saved = next(o for o in outputs if "saved to" in o)
    assert "scratch:" in saved and "${CLUSTER_KEY}" in saved and "smollm2:" not in saved
    assert "remote" in text


def test_compare(runs):
    text = "\n".join(texts(runs["compare"][1]))
    assert "── smollm2 ──" in text and "── smol-hf ──" in text
    for model_id in ("smollm2", "smol-hf"):  # the same file on both backends gives the same greedy answer
        assert re.search(rf"{model_id} +\d+ characters: 'The capital of Japan is Tokyo", text)
    assert "answers are noise" not in text


def test_tiers(runs):
    outputs = texts(runs["tiers"][1])
    text = "\n".join(outputs)
    assert "The capital of Japan is Tokyo" in text and "evicted tts (budget" in text
    assert "loaded (protected)" in text and "asr: character logits of shape (1, " in text
    assert "evicted 'smollm2' (budget)" in text and "evicted 'asr'" not in text
    assert "Does not fit together" in text and "[an interactive widget" in outputs[-2]


@pytest.mark.slow
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
