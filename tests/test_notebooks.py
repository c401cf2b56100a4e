"""Every notebook in notebooks/ runs top to bottom offline with `jupyter nbconvert --execute`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from jupyter_llm_manager.cli import _output_text

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    """One cache for all notebooks, so the demo models are built once (as on a user's machine)."""
    return tmp_path_factory.mktemp("cache")


def execute(notebook: Path, tmp_path: Path, cache: Path) -> list[str]:
    """Run it as the README's check does; return each code cell's printed text."""
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "XDG_CACHE_HOME": str(cache),
           "HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    env.pop("JUPYTER_LLM_MANAGER_CONFIG", None)
    done = subprocess.run(check=False, args=[sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
                           str(notebook), "--output-dir", str(tmp_path), "--ExecutePreprocessor.timeout=300"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    executed = nbformat.read(tmp_path / notebook.name, as_version=4)
    return ["\n".join(_output_text(o) for o in cell.get("outputs", []))
            for cell in executed.cells if cell.cell_type == "code"]


def test_the_four_notebooks_are_there():
    assert [n.name for n in NOTEBOOKS] == ["compare.ipynb", "config.ipynb", "memory.ipynb", "quickstart.ipynb"]
    for notebook in NOTEBOOKS:
        markdown = "".join(c.source for c in nbformat.read(notebook, as_version=4).cells if c.cell_type == "markdown")
        assert "Qwen/Qwen2.5" in markdown  # each shows the lines for a real Hub model


def test_quickstart(tmp_path, cache):
    outputs = execute(ROOT / "notebooks" / "quickstart.ipynb", tmp_path, cache)
    text = "\n".join(outputs)
    assert "loaded demo-small" in text and "tok/s" in text
    assert "random weights: their answers are noise" in text and text.count("answers are noise") == 1
    assert "characters:" in text  # -o stored the answer
    assert "Models" in text and "keep-alive left" in text and "Devices" in text
    assert "[an interactive widget" in outputs[-1]


def test_memory(tmp_path, cache):
    text = "\n".join(execute(ROOT / "notebooks" / "memory.ipynb", tmp_path, cache))
    assert "evicted 'demo-small' (budget)" in text
    assert "Cannot load 'demo-small': not enough memory" in text and "(pinned)" in text
    assert "unloaded after being idle: True" in text
    assert "held by variable 'kept'" in text and "No unloaded model is still alive" in text


def test_config(tmp_path, cache, monkeypatch):
    monkeypatch.setenv("CLUSTER_KEY", "sk-never-shown-123")
    outputs = execute(ROOT / "notebooks" / "config.ipynb", tmp_path, cache)
    text = "\n".join(outputs)
    listing = next(o for o in outputs if "Registered models" in o)
    ids = [line.split()[0] for line in listing.splitlines()[3:] if line.strip()]
    assert ids == ["small", "large", "cluster"]  # the file's models; the demo placeholders made way
    assert "scratch:" in text and "${CLUSTER_KEY}" in text and "sk-never-shown-123" not in text
    assert "remote" in text


def test_compare(tmp_path, cache):
    text = "\n".join(execute(ROOT / "notebooks" / "compare.ipynb", tmp_path, cache))
    assert "── demo-small ──" in text and "── demo-large ──" in text
    assert "demo-small" in text and "characters" in text
