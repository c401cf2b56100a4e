"""The JupyterLab extension: packaged for a node-less install, and its committed build matches its source."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import jupyter_llm_manager

ROOT = Path(__file__).resolve().parent.parent
BUILT = ROOT / "jupyter_llm_manager" / "labextension"


def test_the_package_says_where_its_labextension_is():
    (path,) = jupyter_llm_manager._jupyter_labextension_paths()
    assert path == {"src": "labextension", "dest": "jupyter-llm-manager"}
    assert (Path(jupyter_llm_manager.__file__).parent / path["src"] / "package.json").exists()


def test_jupyter_labextension_list_shows_it_enabled_and_ok():
    done = subprocess.run([sys.executable, "-m", "jupyter", "labextension", "list"], check=False, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_COLOR": "1"})
    line = next((l for l in (done.stdout + done.stderr).splitlines() if "jupyter-llm-manager" in l), "")
    assert "enabled" in line and "OK" in line and "(python, jupyter_llm_manager)" in line, done.stdout + done.stderr


@pytest.mark.slow
def test_the_committed_build_matches_the_source(tmp_path):
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        pytest.skip("node and npm are not installed: the committed build cannot be checked here")
    source = tmp_path / "labextension"
    shutil.copytree(ROOT / "labextension", source,
                    ignore=shutil.ignore_patterns("node_modules", "lib", "tsconfig.tsbuildinfo"))
    # npm install with the committed lockfile installs its versions; npm ci refuses a lockfile made on another
    # platform (it lacks the other platforms' optional rspack binaries)
    for step in (["install", "--no-audit", "--no-fund"], ["run", "build"]):
        done = subprocess.run([npm, *step], check=False, cwd=source, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    rebuilt = tmp_path / "jupyter_llm_manager" / "labextension"
    comparison = filecmp.dircmp(rebuilt, BUILT)

    def differences(node: filecmp.dircmp) -> list[str]:
        found = node.left_only + node.right_only + [f for f in node.common_files
                                                     if not filecmp.cmp(Path(node.left) / f, Path(node.right) / f,
                                                                        shallow=False)]
        return found + [d for sub in node.subdirs.values() for d in differences(sub)]

    assert differences(comparison) == [], ("the committed build differs from labextension/: run npm run build "
                                           "in labextension/ and commit jupyter_llm_manager/labextension")
    assert json.loads((BUILT / "package.json").read_text())["name"] == "jupyter-llm-manager"
