"""One report, one table: text that fits a width without cutting a name, HTML that adapts, JSON for JupyterLab."""

from __future__ import annotations

import re

from jupyter_llm_manager.frontends.views.machine import machine_tables, models_table
from jupyter_llm_manager.frontends.views.table import Cell, Column, Table
from jupyter_llm_manager.reports import KernelRow, MachineModel, MachineReport

LONG = "analysis/experiments/2026/report-with-a-long-name.ipynb"


def table() -> Table:
    return Table([Column("model"), Column("notebook"), Column("state"), Column("last use", 1),
                  Column("pinned", 2)],
                 [["smollm2", Cell(LONG, title="/home/me/" + LONG), "loaded", "12s ago", "yes"],
                  ["qwen-0.5b-instruct", "b.ipynb", "registered", "", ""]], caption="Models", notes=["a note"])


def test_text_within_a_width_leaves_out_optional_columns_first_then_shows_cards():
    wide = table().text()
    assert wide.splitlines()[1].split() == ["model", "notebook", "state", "last", "use", "pinned"]
    without_last_use = table().text(len(wide.splitlines()[1]) - 3)
    assert "last use" not in without_last_use and "pinned" in without_last_use
    narrow = table().text(90)
    assert "last use" not in narrow and "pinned" not in narrow and LONG in narrow
    assert all(len(line) <= 90 for line in narrow.splitlines())
    cards = table().text(40)  # even model, notebook and state do not fit: one card per row, nothing cut
    assert f"  notebook: {LONG}" in cards and "  pinned: yes" in cards and "qwen-0.5b-instruct" in cards
    assert "  last use:" in cards and cards.count("  last use:") == 1  # empty values are left out
    assert cards.splitlines()[0] == "Models" and cards.splitlines()[-1] == "a note"


def test_html_hides_optional_columns_then_shows_cards_below_the_width_its_words_need():
    shown = table().html()
    css = re.search(r"<style>(.*?)</style>", shown).group(1)
    widths = [float(w) for w in re.findall(r"@container \(max-width: ([\d.]+)em\)", css)]
    assert len(widths) == 3 and widths == sorted(widths, reverse=True)  # last use, then pinned, then cards
    hidden = re.findall(r"\{ ([^{}]*) \{ display: none \} \}", css)
    assert [h.count(".jlm-c") for h in hidden] == [1, 1] and "jlm-c3" in hidden[0] and "jlm-c4" in hidden[1]
    assert "attr(data-label)" in css and "container-type: inline-size" in shown
    assert f"title='/home/me/{LONG}'" in shown  # the full path on hover
    assert table().html() == shown  # the same table renders the same HTML (a dashboard sends only changes)


def test_json_has_the_cells_as_shown_and_the_data_a_front_end_acts_on():
    models = (MachineModel(1, "/home/me/a.ipynb", "m", "cpu", 10**9, "loaded", False, 0, 1.0, False, member="x"),)
    shown = models_table(models).json()
    assert [c["name"] for c in shown["columns"]][:3] == ["device", "model", "notebook"]
    row = shown["rows"][0]
    assert row["member"] == "x" and row["unloadable"] is True and row["cells"]["model"]["text"] == "m"


def test_machine_tables_say_this_one_and_count_managers():
    report = MachineReport((KernelRow(1, "a.ipynb", "k" * 32, "m1", True, 1, 10**9),
                            KernelRow(2, "b.ipynb", "", "m2", False, 0, 0)), (), (), True, "/tmp/ledger.sqlite")
    kernels = machine_tables(report)[0]
    assert kernels.caption == "2 managers on this machine share /tmp/ledger.sqlite"
    assert kernels.rows[0][0].text == "a.ipynb (this one)" and kernels.rows[1][2].text == "-"
    assert [r[0].text for r in machine_tables(report, include_this=False)[0].rows] == ["b.ipynb"]
