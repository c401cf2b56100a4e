"""What a newcomer sees in a real JupyterLab (headless Chromium): no stderr in a fresh kernel's first %%llm
cell, an interrupt without a traceback, an inserted %%llm cell ready to type in, a dashboard that stays
aligned beside the side panel. Screenshots are kept in artifacts/."""

from __future__ import annotations

import re
from dataclasses import replace
from pathlib import Path

import pytest
from jlm_helpers.browser import (
    artifacts,
    cell,
    chromium_page,
    inside,
    jupyterlab,
    require_browser,
    run_all_cells,
    screenshot_on_failure,
    write_notebook,
)

pytestmark = pytest.mark.browser

STDERR = ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"


@pytest.fixture(scope="module")
def long_context_model(tmp_path_factory) -> Path:
    """A tiny model with a 64K context: a forced 60,000-token answer runs for a minute or more, so the
    interrupt always lands mid-answer (the 512-token default model can finish first on a fast machine)."""
    from jupyter_llm_manager.models.tiny import SMALL, build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("long") / "tiny-long",
                            replace(SMALL, max_position_embeddings=65_536, seed=3))


def test_first_cells_interrupt_insert_and_dashboard(tmp_path, tiny_models, long_context_model):
    require_browser()
    notebook = write_notebook(tmp_path / "first.ipynb", [
        (f"%load_ext jupyter_llm_manager\n%llm register tiny {tiny_models['a']}\n%llm register other "
        f"{tiny_models['b']}\n%llm register long {long_context_model}"),
        "%%llm tiny -n 5 -p min_new_tokens=5\nHello",
        "%%llm long -n 60000 -p min_new_tokens=60000\nGo on and on",
        "%llm dashboard",
    ])
    shots = artifacts()
    with jupyterlab(tmp_path, tmp_path / "server") as url, chromium_page(width=1300) as page, \
            screenshot_on_failure(page, "first-run"):
        page.goto(url.format(path=notebook.name))
        run_all_cells(page, 2)

        # item 1: the first %%llm cell of a fresh kernel (torch imported right then) shows no stderr box
        page.wait_for_selector(inside(1, ".jp-OutputArea-output >> text=/tok\\/s/"), timeout=120_000)
        assert page.query_selector_all(f"{cell(1)} >> {STDERR}") == []
        assert "Traceback" not in page.inner_text(cell(1)) and "partially initialized" not in page.inner_text(cell(1))
        page.screenshot(path=str(shots / "first-run-first-cell.png"), full_page=True)

        # item 5: Kernel > Interrupt during a long answer: the partial answer, its token count, no traceback
        page.keyboard.press("Shift+Enter")
        page.wait_for_selector(inside(2, ".jp-OutputArea-output >> text=/\\S/"), timeout=60_000)
        page.wait_for_function("""() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')][2]
            .querySelector('.jp-OutputArea-output')?.innerText.trim().length > 20""", timeout=60_000)
        page.click(".lm-MenuBar-itemLabel >> text=Kernel")
        page.click(".lm-Menu-itemLabel >> text=/^Interrupt Kernel/")
        page.wait_for_selector(inside(2, "text=/interrupted/"), timeout=60_000)
        text = page.inner_text(cell(2))
        assert "Traceback" not in text and "KeyboardInterrupt" not in text
        assert page.query_selector_all(f"{cell(2)} >> {STDERR}") == []
        tokens = int(re.search(r"· (\d+) tokens ·[^\n]*interrupted", text).group(1))
        assert 0 < tokens < 60_000  # the true count of what is on screen, not 0
        page.screenshot(path=str(shots / "first-run-interrupt.png"), full_page=True)

        # item 8: "LLM: Insert %%llm cell" from the palette: edit mode, cursor on line 2
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Shift+c")
        page.keyboard.type("LLM: Insert")
        page.keyboard.press("Enter")
        page.wait_for_selector(".jp-Notebook.jp-mod-editMode", timeout=10_000)
        page.keyboard.type("typed prompt")
        source = page.evaluate("""() => { const cell = document.querySelector('.jp-Notebook .jp-Cell.jp-mod-active');
            return [...cell.querySelectorAll('.cm-line')].map(l => l.textContent).join('\\n'); }""")
        assert source == "%%llm\ntyped prompt"
        # and from the context menu
        page.keyboard.press("Escape")
        page.click(cell(0), button="right")
        page.click(".lm-Menu-item >> text=LLM: Insert %%llm cell")
        page.wait_for_selector(".jp-Notebook.jp-mod-editMode", timeout=10_000)
        page.keyboard.type("from the menu")
        source = page.evaluate("""() => { const cell = document.querySelector('.jp-Notebook .jp-Cell.jp-mod-active');
            return [...cell.querySelectorAll('.cm-line')].map(l => l.textContent).join('\\n'); }""")
        assert source == "%%llm\nfrom the menu"
        page.screenshot(path=str(shots / "first-run-inserted-cell.png"), full_page=True)

        # item 10: the dashboard beside the open side panel: header and rows aligned, labels whole
        page.keyboard.press("Escape")
        page.click(".jp-LLMStatusItem")  # opens the models panel on the right
        page.wait_for_selector("#jupyter-llm-manager-panel .jp-LLMPanel-row", timeout=30_000)
        dashboard_cell = page.locator(".jp-Notebook .jp-Cell").filter(has_text="%llm dashboard")
        dashboard_cell.locator(".jp-InputPrompt").click()
        page.keyboard.press("Control+Enter")
        page.wait_for_selector("text=LLM models in this kernel", timeout=60_000)
        page.wait_for_selector(".widget-gridbox >> text=other", timeout=30_000)
        columns = page.evaluate("""() => {
            const grid = document.querySelector('.widget-gridbox');
            const cells = [...grid.children].filter(c => getComputedStyle(c).display !== 'none');  // shown ones
            const columns = getComputedStyle(grid).gridTemplateColumns.split(' ').length;
            const lefts = cells.map(c => Math.round(c.getBoundingClientRect().left));
            const rows = [];
            for (let i = 0; i < cells.length; i += columns) rows.push(lefts.slice(i, i + columns));
            const buttons = [...grid.querySelectorAll('button')].map(b => b.scrollWidth <= b.clientWidth + 1);
            const area = grid.closest('.jp-OutputArea-output').getBoundingClientRect().right;
            const inside = cells.every(c => c.getBoundingClientRect().right <= area + 1);
            return {columns, rows, buttons, inside}; }""")
        assert columns["inside"]  # nothing cut off at the right edge beside the panel
        header, *rows = columns["rows"]
        assert columns["columns"] in (5, 7) and rows  # narrow: last use and keep-alive are left out
        for row in rows:
            assert all(abs(a - b) <= 2 for a, b in zip(header, row)), (header, row)
        assert all(columns["buttons"])  # no "Unl…"
        cap = page.get_attribute(".widget-gridbox ~ * input[placeholder='no cap'], input[placeholder='no cap']",
                                 "placeholder")
        assert cap == "no cap"
        page.screenshot(path=str(shots / "first-run-dashboard-with-panel.png"), full_page=True)
