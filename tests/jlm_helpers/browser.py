"""Real-browser helpers: JupyterLab on 127.0.0.1 and Debian's headless Chromium through Playwright.

Tests that use them skip, with the reason, where Chromium, Playwright or
JupyterLab is missing. Screenshots go to ``artifacts/`` (or ``$JLM_ARTIFACTS``).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from jlm_helpers.processes import free_port, stop, wait_for_http

CHROMIUM = os.environ.get("JLM_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--no-first-run", "--disable-quic"]
ROOT = Path(__file__).resolve().parents[2]  # the repository


def artifacts() -> Path:
    folder = Path(os.environ.get("JLM_ARTIFACTS", ROOT / "artifacts"))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def require_browser() -> None:
    """Skip the calling test, saying why, where the browser stack is not installed."""
    if not (os.path.exists(CHROMIUM) or shutil.which("chromium")):
        pytest.skip(f"Chromium is not installed ({CHROMIUM}); install Debian's chromium package")
    pytest.importorskip("playwright.sync_api", reason="playwright is not installed (pip install playwright)")
    pytest.importorskip("jupyterlab", reason="jupyterlab is not installed")


def write_lab_setting(tmp: Path, plugin: str, values: dict) -> None:
    """A user setting of the JupyterLab that :func:`jupyterlab` runs in ``tmp`` (read when a page loads).

    ``plugin`` as JupyterLab names it: ``@jupyterlab/apputils-extension:kernels-settings``.
    """
    package, _, name = plugin.rpartition(":")
    folder = tmp / "lab-settings" / package
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.jupyterlab-settings").write_text(json.dumps(values))


def this_checkouts_labextension(tmp: Path) -> Path:
    """A Jupyter data folder whose labextension is this checkout's build (it comes before the installed one)."""
    folder = tmp / "jupyter-data" / "labextensions"
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / "jupyter-llm-manager"
    if not link.exists():
        link.symlink_to(ROOT / "jupyter_llm_manager" / "labextension", target_is_directory=True)
    return folder.parent


@contextlib.contextmanager
def jupyterlab(root: Path, tmp: Path, timeout: float = 60) -> Iterator[str]:
    """Run JupyterLab on ``root`` with this checkout's extension; yields the base URL with its token; stops it after."""
    port, token = free_port(), secrets.token_hex(16)
    write_lab_setting(tmp, "@jupyterlab/apputils-extension:notification", {"fetchNews": "false",
                                                                           "checkForUpdates": False})
    data = [str(this_checkouts_labextension(tmp))] + [p for p in os.environ.get("JUPYTER_PATH", "").split(os.pathsep)
                                                      if p]
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp / "jupyter-config"),
           "JUPYTER_RUNTIME_DIR": str(tmp / "jupyter-runtime"), "JUPYTERLAB_SETTINGS_DIR": str(tmp / "lab-settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp / "lab-workspaces"), "HF_HUB_OFFLINE": "1",
           "JUPYTER_PATH": os.pathsep.join(data)}
    command = [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1",
               f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
               f"--ServerApp.root_dir={root}", "--LabApp.news_url=None",
               "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    log = (tmp / "jupyterlab.log").open("w")
    server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    base = f"http://127.0.0.1:{port}"
    try:
        failure = wait_for_http(f"{base}/api/status?token={token}", server, timeout)
        if failure:
            raise RuntimeError(f"JupyterLab {failure}: {(tmp / 'jupyterlab.log').read_text()[-2000:]}")
        yield f"{base}/lab/tree/{{path}}?token={token}"
    finally:
        stop(server)
        log.close()


@contextlib.contextmanager
def chromium_page(width: int = 1400, height: int = 900) -> Iterator[object]:
    """A Playwright page in Debian's headless Chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM if os.path.exists(CHROMIUM)
                                             else shutil.which("chromium"), args=CHROMIUM_FLAGS)
        try:
            yield browser.new_page(viewport={"width": width, "height": height})
        finally:
            browser.close()


@contextlib.contextmanager
def screenshot_on_failure(page: object, name: str) -> Iterator[None]:
    """Keep what the browser showed when a step fails (``artifacts/NAME-failure.png``, and its text in the log).

    The text goes to the test's captured output, so a failure on a machine whose artifacts are out of
    reach (CI) still says what the page showed.
    """
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            page.screenshot(path=str(artifacts() / f"{name}-failure.png"), full_page=True)
        with contextlib.suppress(Exception):
            print(f"--- what the page showed when {name} failed (end) ---\n{page.inner_text('body')[-4000:]}")
        raise


def write_notebook(path: Path, cells: list[str]) -> Path:
    import nbformat

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(source) for source in cells])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, path)
    return path


def cell(index: int) -> str:
    """The selector of the notebook's cell number ``index`` (from 0)."""
    return f".jp-Notebook .jp-Cell >> nth={index}"


def inside(index: int, selector: str) -> str:
    """``selector`` within cell number ``index``."""
    return f"{cell(index)} >> {selector}"


def run_all_cells(page: object, count: int) -> None:
    """Run every cell of the open notebook from the top, as a user does with Shift+Enter."""
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60_000)
    page.wait_for_selector(".jp-StatusBar-Widget >> text=/\\| Idle/", timeout=90_000)  # the kernel is connected
    page.click(".jp-Notebook .jp-Cell >> nth=0")
    page.keyboard.press("Escape")
    for _ in range(count):
        page.keyboard.press("Shift+Enter")


# -- several notebooks in one window ---------------------------------------------------------------------

def workspace(url: str, name: str, left: str, right: str) -> str:
    """A JupyterLab workspace with ``left`` and ``right`` open side by side, the file browser closed; its URL."""
    base, _, query = url.partition("/lab/tree/")
    token = query.rpartition("token=")[2]
    dock = {"type": "split-area", "orientation": "horizontal", "sizes": [0.5, 0.5],
            "children": [{"type": "tab-area", "currentIndex": 0, "widgets": [f"notebook:{path}"]}
                         for path in (left, right)]}
    data = {"layout-restorer:data": {"main": {"dock": dock, "current": f"notebook:{left}"},
                                     "left": {"collapsed": True, "visible": True, "widgets": []},
                                     "right": {"collapsed": True, "visible": True, "widgets": []}},
            **{f"notebook:{path}": {"data": {"path": path, "factory": "Notebook"}} for path in (left, right)}}
    request = urllib.request.Request(f"{base}/lab/api/workspaces/{name}", method="PUT",
                                     data=json.dumps({"data": data, "metadata": {"id": name}}).encode(),
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 204)
    return f"{base}/lab/workspaces/{name}?token={token}"


def notebook(tag: str) -> str:
    """The notebook panel whose first cell carries ``tag``."""
    return f".jp-NotebookPanel:has-text('{tag}')"


def run(page, scope: str, index: int) -> None:
    """Run cell ``index`` of the notebook ``scope`` (Ctrl+Enter: it stays selected)."""
    page.click(f"{scope} .jp-Cell >> nth={index} >> .jp-InputPrompt")
    page.keyboard.press("Control+Enter")


def output(scope: str, index: int) -> str:
    return f"{scope} .jp-Cell >> nth={index} >> .jp-OutputArea-output"
