"""The JupyterLab extension in a real JupyterLab and Chromium; screenshots are kept as artifacts."""

from __future__ import annotations

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

STATUS = ".jp-LLMStatusItem"
PANEL = "#jupyter-llm-manager-panel"


def row(model: str) -> str:
    return f"{PANEL} .jp-LLMPanel-row[data-model='{model}']"


def run_cell(page, index: int) -> None:
    page.click(inside(index, ".jp-InputPrompt"))
    page.keyboard.press("Control+Enter")


def test_status_bar_panel_unload_highlighting_commands_and_restarts(tmp_path, tiny_models):
    require_browser()
    notebook = write_notebook(tmp_path / "lab.ipynb", [
        f"%load_ext jupyter_llm_manager\n%llm register tiny-a {tiny_models['a']}\n%llm default tiny-a",
        "%%llm tiny-a -n 5 -p min_new_tokens=5\n# A title\nSay hello to the **world** in one word.",
        "from jupyter_llm_manager import get_manager\nget_manager().row('tiny-a').state",
        "1 + 1",
    ])
    write_notebook(tmp_path / "other.ipynb", ["2 + 2"])
    shots = artifacts()
    with jupyterlab(tmp_path, tmp_path / "server") as url, chromium_page() as page, \
            screenshot_on_failure(page, "labextension"):
        page.goto(url.format(path=notebook.name))
        run_all_cells(page, 4)

        # the status bar follows the kernel's manager
        page.wait_for_selector(f"{STATUS} >> text=/LLM 1 · \\d/", timeout=90_000)
        page.wait_for_selector(inside(2, ".jp-OutputArea-output >> text=/'loaded'/"), timeout=60_000)

        # the %%llm body is Markdown, the first line and other cells stay Python
        llm_editor = inside(1, ".cm-editor")
        assert "jp-LLMCell" in page.get_attribute(llm_editor, "class")
        assert "jp-LLMCell" not in page.get_attribute(inside(3, ".cm-editor"), "class")
        weight = page.evaluate("""() => {
            const lines = [...document.querySelectorAll('.jp-Notebook .jp-Cell')][1].querySelectorAll('.cm-line');
            const span = [...lines[2].querySelectorAll('span')].find(s => s.textContent.includes('world'));
            return span ? getComputedStyle(span).fontWeight : null; }""")
        assert weight is not None and int(weight) >= 600  # **world** is strong in Markdown, not Python operators
        magic_line = page.evaluate("""() => [...document.querySelectorAll('.jp-Notebook .jp-Cell')][1]
            .querySelector('.cm-line').querySelectorAll('span').length""")
        assert magic_line >= 1  # the magic line still gets Python tokens
        page.screenshot(path=str(shots / "labextension-notebook.png"), full_page=True)

        # the panel opens from the status bar and lists the kernel's models
        page.click(STATUS)
        page.wait_for_selector(f"{row('tiny-a')} .jp-LLMPanel-state >> text=loaded", timeout=30_000)
        page.screenshot(path=str(shots / "labextension-panel.png"), full_page=True)

        # Unload in the panel really unloads the model in the kernel
        page.click(f"{row('tiny-a')} button:has-text('Unload')")
        page.wait_for_selector(f"{row('tiny-a')} .jp-LLMPanel-state >> text=registered", timeout=60_000)
        page.wait_for_selector(f"{STATUS} >> text=/LLM 0 ·/", timeout=30_000)
        run_cell(page, 2)
        page.wait_for_selector(inside(2, ".jp-OutputArea-output >> text=/'registered'/"), timeout=60_000)

        # commands in the palette and the notebook's context menu
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Shift+c")
        page.keyboard.type("LLM:")
        palette = page.inner_text(".lm-CommandPalette-content")
        for label in ("LLM: Unload all models", "LLM: Free memory", "LLM: Open models panel",
                      "LLM: Insert %%llm cell"):
            assert label in palette
        page.keyboard.press("Escape")
        page.click(cell(3), button="right")
        page.click(".lm-Menu-item >> text=LLM: Insert %%llm cell")
        page.wait_for_selector(inside(4, ".cm-editor.jp-LLMCell"), timeout=10_000)

        # consoles too: the prompt of a console switches to the %%llm language
        page.click(cell(3), button="right")
        page.click(".lm-Menu-item >> text=New Console for Notebook")
        prompt = ".jp-CodeConsole-promptCell .cm-content"
        page.wait_for_selector(prompt, timeout=30_000)
        page.click(prompt)
        page.keyboard.type("%%llm tiny-a")
        page.keyboard.press("Enter")  # a line break: consoles run on Shift+Enter
        page.keyboard.type("Say **hi**")
        page.wait_for_selector(".jp-CodeConsole-promptCell .cm-editor.jp-LLMCell", timeout=10_000)
        weight = page.evaluate("""() => {
            const lines = document.querySelectorAll('.jp-CodeConsole-promptCell .cm-line');
            const span = [...lines[lines.length - 1].querySelectorAll('span')].find(s => s.textContent.includes('hi'));
            return span ? getComputedStyle(span).fontWeight : null; }""")
        assert weight is not None and int(weight) >= 600
        page.screenshot(path=str(shots / "labextension-console.png"), full_page=True)
        page.click(".jp-NotebookPanel-notebook", position={"x": 200, "y": 20})

        # both follow the active notebook: one whose kernel has not loaded the extension shows nothing
        page.dblclick(".jp-DirListing-item >> text=other.ipynb")
        page.wait_for_selector(f"{PANEL} >> text=Kernel of other.ipynb", timeout=30_000)
        page.wait_for_selector(f"{PANEL} >> text=not loaded in this kernel", timeout=60_000)
        page.wait_for_selector(STATUS, state="hidden", timeout=30_000)
        page.click(".lm-MenuBar-itemLabel >> text=File")
        page.click(".lm-Menu-itemLabel >> text=/^Close Tab/")
        page.click(".jp-Dialog button:has-text('Discard')")  # the kernel's language_info marked it changed
        page.wait_for_selector(f"{PANEL} >> text=Kernel of lab.ipynb", timeout=30_000)
        page.wait_for_selector(f"{STATUS} >> text=/LLM 0 ·/", timeout=30_000)
        page.click(".jp-NotebookPanel-notebook", position={"x": 200, "y": 20})

        # a restarted kernel has to load the extension again: the status bar and panel follow
        page.click(".lm-MenuBar-itemLabel >> text=Kernel")
        page.click(".lm-Menu-itemLabel >> text=/^Restart Kernel…/")
        page.click(".jp-Dialog button:has-text('Restart')")
        page.wait_for_selector(STATUS, state="hidden", timeout=60_000)
        page.wait_for_selector(f"{PANEL} >> text=not loaded in this kernel", timeout=60_000)
        page.screenshot(path=str(shots / "labextension-not-loaded.png"), full_page=True)
        page.wait_for_selector(".jp-StatusBar-Widget >> text=/\\| Idle/", timeout=90_000)
        run_cell(page, 0)
        page.wait_for_selector(f"{STATUS} >> text=/LLM 0 ·/", timeout=60_000)
    for name in ("labextension-notebook", "labextension-panel", "labextension-console", "labextension-not-loaded"):
        assert (shots / f"{name}.png").stat().st_size > 10_000
