"""The README and docs/ stay true: every command is run (by CI or here), links resolve, options are documented."""

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
from jlm_helpers.processes import stop, wait_for_http

from jupyter_llm_manager.frontends.notebook.arguments import CELL_PARSER, LINE_COMMANDS

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()
#: The README first, then the docs/ pages in name order: the order in which .ci/run reads them.
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:<!-- (?P<marker>[^>]*) -->\n)?```bash\n(?P<command>.*?)```", re.DOTALL)
TESTED_HERE = "tested-by: tests/test_readme.py"


def commands(text: str = README) -> list[tuple[str | None, str]]:
    return [(m.group("marker"), m.group("command").strip()) for m in BLOCK.finditer(text)]


def test_every_command_is_marked_as_run_by_ci_or_by_this_file():
    found = commands()
    assert len(found) >= 4
    for marker, command in found:
        assert marker == "ci" or marker == TESTED_HERE, f"unmarked command: {command}"
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


def test_every_command_of_the_docs_pages_is_marked_too():
    """A page's command is run by CI, or is a benchmark marked as run by hand; the README's alone are tested here."""
    pages = PAGES[1:]
    assert pages, "docs/ holds the reference"
    for page in pages:
        for marker, command in commands(page.read_text()):
            allowed = {"ci", "manual"} if page.name == "benchmarks.md" else {"ci"}
            assert marker in allowed, f"{page.name}: command marked {marker!r}: {command}"
            assert "\n" not in command, f"{page.name}: one command per block, so CI runs it as written"


def test_ci_runs_the_readme_commands_then_the_docs_pages_commands():
    listed = subprocess.run(["bash", str(ROOT / ".ci" / "run"), "--list"], capture_output=True, text=True,
                            check=True, timeout=60).stdout.splitlines()
    expected = [command for page in PAGES for marker, command in commands(page.read_text()) if marker == "ci"]
    assert listed == expected
    assert listed[0].startswith("python3 -m venv .venv") and listed[0].endswith("jupyter-llm-manager quickstart")
    assert any(c.startswith("python3 -m venv .venv") and c.endswith("python -m pytest") for c in listed[:3])


def _slug(heading: str) -> str:
    """The anchor GitHub gives a Markdown heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_slug(m.group(1)) for m in re.finditer(r"^#+ (.+)$", text, re.MULTILINE)}


def test_every_link_between_the_readme_and_the_docs_pages_resolves():
    checked = 0
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            linked = (page.parent / path).resolve() if path else page
            assert linked.exists(), f"{page.name} links to {target}, which does not exist"
            if anchor:
                assert anchor in _anchors(linked), f"{page.name} links to {target}: no such heading"
            checked += 1
    assert checked >= 20


def test_the_readme_learn_more_list_links_every_docs_page():
    learn_more = README.partition("## Learn more")[2]
    for page in PAGES[1:]:
        assert f"(docs/{page.name})" in learn_more, f"docs/{page.name} is not in the README's Learn more list"


def test_the_readme_is_short_and_speaks_to_users_before_the_reference():
    assert len(README.splitlines()) < 250
    before_the_magics = README.partition("## The magics")[0]
    assert before_the_magics != README, "the README has a section on the magics"
    for word in ("state", "lease", "leases", "admission", "admitted", "policy"):
        assert not re.search(rf"\b{word}\b", before_the_magics, re.IGNORECASE), f"{word!r} before the magics"
    for term in ("GGUF", "KV cache", "NVML"):  # explained in a phrase where they first appear
        first = README.index(term)
        assert "(" in README[first:first + 120] or "—" in README[first:first + 120], f"{term} is not explained"


def test_no_internal_reference_numbers_anywhere_in_the_docs():
    for page in PAGES:
        assert not re.search(r"\b(seed|issue)[ -]?0\d\d\b", page.read_text(), re.IGNORECASE), page.name


def test_every_yaml_example_is_a_configuration_that_loads(tmp_path):
    from jupyter_llm_manager.config.files import load_config

    loaded = 0
    for page in PAGES:
        for number, match in enumerate(re.finditer(r"```yaml\n(.*?)```", page.read_text(), re.DOTALL)):
            path = tmp_path / f"{page.stem}-{number}.yaml"
            path.write_text(match.group(1))
            assert load_config(path).models, f"{page.name}: YAML example {number + 1} defines no model"
            loaded += 1
    assert loaded >= 4


def test_every_setting_and_model_field_is_in_the_configuration_page():
    from jupyter_llm_manager.config.settings import SETTING_NAMES
    from jupyter_llm_manager.config.spec_fields import CONVERTERS

    page = (ROOT / "docs" / "configuration.md").read_text()
    for name in (*SETTING_NAMES, *CONVERTERS):
        assert f"`{name}`" in page, f"{name} is not in docs/configuration.md"


def test_every_magics_setting_command_line_command_and_benchmark_is_documented(capsys):
    from jupyter_llm_manager.frontends.cli import main
    from jupyter_llm_manager.frontends.notebook.magics import LLMMagics

    magics = (ROOT / "docs" / "magics.md").read_text()
    for name in LLMMagics.class_trait_names(config=True):
        assert f"`{name}`" in magics, f"LLMMagics.{name} is not in docs/magics.md"
    with pytest.raises(SystemExit):
        main(["--help"])
    (listed,) = re.findall(r"\{([a-z,]+)\}", capsys.readouterr().out)[:1]
    cli = (ROOT / "docs" / "command-line.md").read_text()
    for command in listed.split(","):
        assert f"| `{command}" in cli, f"jupyter-llm-manager {command} is not in docs/command-line.md"
    benchmarks = [command for marker, command in commands((ROOT / "docs" / "benchmarks.md").read_text())
                  if marker == "ci"]
    for script in sorted((ROOT / "benchmarks").glob("*.py")):  # as it is, or in a short form (its options)
        assert any(command.split()[:2] == [".venv/bin/python", f"benchmarks/{script.name}"] for command in benchmarks), \
            f"{script.name} has no command that CI runs (a short form is fine): a broken one must fail the build"
