"""docs/backends.md's recipe for making a LoRA adapter to try, run as written (a tiny model for the Hub's)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from jupyter_llm_manager import LLMManager

DOC = Path(__file__).resolve().parent.parent / "docs" / "backends.md"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def recipe() -> tuple[str, str]:
    """The Python block and the notebook lines under "Make an adapter to try it"."""
    section = DOC.read_text().split("### Make an adapter to try it", 1)[1].split("\n## ", 1)[0]
    python = re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)
    lines = re.search(r"```text\n(.*?)```", section, re.DOTALL).group(1)
    return python, lines


def test_the_recipe_makes_an_adapter_that_registers_and_answers_unlike_its_base(tiny_models, tmp_path,
                                                                              monkeypatch):
    python, lines = recipe()
    assert "LoraConfig" in python and "get_peft_model" in python and "save_pretrained" in python
    script = tmp_path / "make_adapter.py"
    # A fixed seed: the random adapter's greedy answer on a random tiny model is the end-of-text token now and
    # then (an empty answer, which would say nothing about the recipe).
    script.write_text("import torch\ntorch.manual_seed(0)\n" + python.replace(HUB_ID, str(tiny_models["a"])))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "adapters" / "try-lora" / "adapter_config.json").exists()
    monkeypatch.chdir(tmp_path)  # the notebook runs where the adapter was made

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_llm_manager")
    magics = shell.magics_manager.registry["LLMMagics"]
    manager = LLMManager(config_path=False, preload=False)
    previous, magics.manager = magics.manager, manager
    try:
        register_base, register_adapter, cell_line, prompt = lines.strip().splitlines()
        with capture_output() as captured:
            shell.run_line_magic("llm", register_base.removeprefix("%llm ").replace(HUB_ID, str(tiny_models["a"])))
            shell.run_line_magic("llm", register_adapter.removeprefix("%llm "))
            magic, _, options = cell_line.partition(" ")
            assert magic == "%%llm"
            result = shell.run_cell_magic("llm", f"{options} -o answers -p do_sample=False "
                                                 "-p repetition_penalty=1.0 --raw", prompt)
        assert result is None and "Error" not in captured.stderr, captured.stderr
        answers = shell.user_ns["answers"]
        assert set(answers) == {"smol-hf", "tuned"} and all(answers.values())
        assert answers["smol-hf"] != answers["tuned"]  # the random adapter changes the answer
        assert manager.row("tuned").base == "smol-hf"
    finally:
        magics.manager = previous
        shell.run_line_magic("unload_ext", "jupyter_llm_manager")
        manager.close()
