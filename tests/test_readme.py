"""The README stays true: every command is run (by CI or here), and the magics' options are documented."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from processes import stop, wait_for_http

from jupyter_llm_manager.frontends.notebook.arguments import CELL_PARSER, LINE_COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*) -->\n)?```bash\n(?P<command>.*?)```", re.DOTALL)


def commands() -> list[tuple[str | None, str]]:
    return [(m.group("marker"), m.group("command").strip()) for m in BLOCK.finditer(README)]


def test_every_command_is_marked_as_run_by_ci_or_by_this_file():
    found = commands()
    assert len(found) >= 4
    for marker, command in found:
        assert marker == "ci" or marker == "tested-by: tests/test_readme.py", f"unmarked command: {command}"
        assert "\n" not in command, "one command per block, so CI runs it as written"
    ci = [command for marker, command in found if marker == "ci"]
    assert ci[0].startswith("python3 -m venv .venv") and any("pytest" in c for c in ci)


def test_the_jupyterlab_command_serves_the_quickstart_as_written(tmp_path):
    (command,) = [c for marker, c in commands() if marker == "tested-by: tests/test_readme.py"]
    assert command == ".venv/bin/pip install jupyterlab && .venv/bin/jupyter lab notebooks/quickstart.ipynb"
    venv = Path(sys.prefix)
    if not (ROOT / ".venv").exists() or (ROOT / ".venv").resolve() != venv.resolve():
        pytest.skip("the README command uses ./.venv; these tests run from another environment")
    config = tmp_path / "config"
    config.mkdir()
    # Only what a root CI runner and a headless machine need; the command itself is unchanged.
    (config / "jupyter_server_config.json").write_text(
        '{"ServerApp": {"allow_root": true, "open_browser": false, "ip": "127.0.0.1"}}')
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(config), "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"),
           "BROWSER": "true"}
    log = tmp_path / "lab.log"
    with log.open("w") as output:
        server = subprocess.Popen(["bash", "-c", command], cwd=ROOT, env=env, stdout=output,
                                  stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while not (found := re.search(r"http://127\.0\.0\.1:(\d+)/lab\?token=(\w+)", log.read_text())):
            assert server.poll() is None, log.read_text()[-2000:]
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.3)
        port, token = found.groups()
        # Jupyter Server prints its URL before its event loop binds the port: wait until it answers.
        contents = f"http://127.0.0.1:{port}/api/contents/quickstart.ipynb?token={token}"
        failure = wait_for_http(contents, server, max(deadline - time.monotonic(), 10))
        assert failure is None, f"JupyterLab {failure}: {log.read_text()[-2000:]}"
        with urllib.request.urlopen(contents, timeout=30) as answer:
            assert json.load(answer)["type"] == "notebook"  # it serves the quickstart, ready to open
    finally:
        os.killpg(server.pid, 15)
        stop(server)


def test_every_magic_option_and_subcommand_is_in_the_readme():
    for action in CELL_PARSER._actions:
        if action.option_strings:
            assert any(option in README for option in action.option_strings), \
                f"{'/'.join(action.option_strings)} of %%llm is not in the README"
    for command in LINE_COMMANDS:
        assert re.search(rf"\b{command}\b", README), f"%llm {command} is not in the README"
