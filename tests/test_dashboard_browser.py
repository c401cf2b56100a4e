"""The dashboard rendered by JupyterLab in headless Chromium; the screenshot is kept as an artifact."""

from __future__ import annotations

import pytest
from jlm_helpers.browser import (
    artifacts,
    chromium_page,
    jupyterlab,
    require_browser,
    run_all_cells,
    screenshot_on_failure,
    write_notebook,
)

pytestmark = pytest.mark.browser


def test_dashboard_renders_in_jupyterlab(tmp_path, tiny_models):
    require_browser()
    notebook = write_notebook(tmp_path / "dashboard.ipynb", [
        ("from jupyter_llm_manager import LLMManager, open_dashboard\n"
        "manager = LLMManager(max_loaded_models=2, keep_alive='10m', config_path=False)\n"
        f"manager.register('tiny-a', source={str(tiny_models['a'])!r})\n"
        f"manager.register('tiny-b', source={str(tiny_models['b'])!r}, pinned=True)\n"
        "manager.alias('chat', 'tiny-a')\n"
        "manager.load('tiny-a'); manager.load('tiny-b')\n"
        "manager.generate('chat', 'Hello', max_new_tokens=5)"),
        "board = open_dashboard(manager)\nboard",
    ])
    with jupyterlab(tmp_path, tmp_path / "server") as url, chromium_page() as page, \
            screenshot_on_failure(page, "dashboard"):
        page.goto(url.format(path=notebook.name))
        run_all_cells(page, 2)
        panel = page.wait_for_selector("text=LLM models in this kernel", timeout=90_000)
        page.wait_for_selector(".jp-OutputArea-output >> text=pinned", timeout=60_000)
        page.wait_for_selector(".jp-OutputArea-output >> text=budget", timeout=60_000)
        page.click(".jp-OutputArea-output button:has-text('Unload') >> nth=0")
        page.wait_for_selector(".jp-OutputArea-output >> text=Unloaded 'tiny-a'", timeout=60_000)
        panel.scroll_into_view_if_needed()
        page.screenshot(path=str(artifacts() / "dashboard.png"), full_page=True)
    assert (artifacts() / "dashboard.png").stat().st_size > 10_000
