"""Models that are not LLMs: loaders, tiers, leases and freeing, with real small speech models."""

from __future__ import annotations

import gc
import sys
import weakref

import pytest

from jupyter_llm_manager import ConfigurationError, GenerationError, LLMManager, ModelLoadingError

ASR = "jupyter_llm_manager.models.speech:load_tiny_asr"
TTS = "jupyter_llm_manager.models.speech:load_tiny_tts"
unloaded: list[str] = []


def record_unload(model) -> None:
    """An unloader: called with the model before the manager drops it."""
    unloaded.append(type(model).__name__)


def load_pair(spec):
    """A loader may return anything: here a tuple of a torch module and a plain dict."""
    import torch

    return torch.nn.Linear(512, 512), {"sample_rate": 16000}


@pytest.fixture
def manager():
    manager = LLMManager(config_path=False, preload=False)
    yield manager
    manager.close()


def test_a_loader_model_is_used_through_a_lease_and_measured(manager):
    import torch

    manager.register("asr", loader=ASR, kind="asr")
    assert manager.spec("asr").backend == "loader" and not manager.estimate("asr").known
    with manager.use("asr") as asr:
        logits = asr.model(torch.randn(1, 16000)).logits
        assert logits.shape[0] == 1 and logits.shape[-1] == 32
    row = manager.row("asr")
    assert row.state == "loaded" and row.actual_bytes > 10_000_000 and row.kind == "asr" and row.protected
    with pytest.raises(GenerationError, match="kind 'asr' loaded by .*no text interface"):
        manager.generate("asr", "Hello")
    with pytest.raises(GenerationError, match="no text interface"):
        manager.embed("asr", ["Hello"])


def test_tiers_llm_tts_asr_under_a_small_budget(manager, tiny_models):
    manager.register("asr", loader=ASR, kind="asr", required_memory="80MB")
    manager.register("tts", loader=TTS, kind="tts", required_memory="165MB")
    manager.register("llm", source=str(tiny_models["a"]), required_memory="120MB")
    manager.memory_budget = {"cpu": "300MB"}  # asr + tts fit; asr + llm fit; all three do not
    manager.load("asr")
    manager.load("tts")
    manager.generate("llm", "Hi", max_new_tokens=2)  # needs room: the lowest tier (tts) goes; asr is protected
    states = {row.id: row.state for row in manager.status()}
    assert states == {"asr": "loaded", "tts": "registered", "llm": "loaded"}
    manager.load("tts")  # now the LLM (tier 0) makes way
    assert {row.id: row.state for row in manager.status()} == {"asr": "loaded", "tts": "loaded", "llm": "registered"}
    evicted = [(e.model_id, e.reason) for e in manager.events(None) if e.kind == "evicted"]
    assert evicted == [("tts", "budget"), ("llm", "budget")]  # never asr
    report = manager.plan(["llm", "asr", "tts"])
    assert not report.fits and "llm" in report.verdict
    manager.register("asr2", loader=ASR, kind="asr", required_memory="200MB", options={"layers": 2})
    manager.load("asr2")  # an equal tier may replace a protected one
    assert manager.row("asr2").state == "loaded"


def test_pins_keep_alive_and_the_unloader(manager):
    unloaded.clear()
    manager.register("pair", loader="test_loader_models:load_pair", kind="tts",
                     unloader="test_loader_models:record_unload", keep_alive="1h")
    manager.pin("pair")
    with manager.use("pair") as pair:
        linear, settings = pair.model
        assert settings["sample_rate"] == 16000 and linear.weight.shape == (512, 512)
        ref = weakref.ref(linear)
    del pair, linear, settings
    row = manager.row("pair")
    assert row.pinned and row.actual_bytes == 512 * 512 * 4 + 512 * 4 and row.keep_alive == 3600
    report = manager.unload("pair")
    gc.collect()
    assert unloaded == ["tuple"] and report.collected and ref() is None


def test_loader_errors_are_clear_and_leave_nothing_behind(manager):
    with pytest.raises(ConfigurationError, match="package.module:function"):
        manager.register("x", loader="not a path")
    manager.register("missing", loader="no_such_package.speech:load")
    with pytest.raises(ModelLoadingError, match="cannot be imported: No module named 'no_such_package'"):
        manager.load("missing")
    manager.register("bad-unloader", loader=ASR, unloader="test_loader_models:nope")
    with pytest.raises(ModelLoadingError, match="unloader 'test_loader_models:nope'"):
        manager.load("bad-unloader")
    manager.register("boom", loader="test_loader_models:explode")
    with pytest.raises(ModelLoadingError, match="RuntimeError: the loader broke"):
        manager.load("boom")
    assert all(row.state in ("failed", "registered") for row in manager.status())
    assert "test_loader_models" in sys.modules


def explode(spec):
    raise RuntimeError("the loader broke")


def test_a_loader_model_in_yaml(tmp_path):
    config = tmp_path / "llm.yaml"
    config.write_text(f"models:\n  whisper:\n    loader: {ASR}\n    kind: asr\n    required_memory: 1.5GB\n"
                      "    options: {layers: 1, hidden_size: 64}\n")
    manager = LLMManager(config_path=config, preload=False)
    try:
        spec = manager.spec("whisper")
        assert spec.backend == "loader" and spec.required_memory == 1_500_000_000
        assert manager.estimate("whisper").total_bytes == 1_500_000_000
        written = config.read_text()
        manager.save()
        assert config.read_text() == written  # unchanged, so kept as the user wrote it
        fresh = manager.save(tmp_path / "fresh.yaml").read_text()
        assert f"loader: {ASR}" in fresh and "backend: loader" in fresh
    finally:
        manager.close()


def make_spec_mock(spec):
    """A mock that claims to be a torch module (its __class__ says so); its parameters() is a Mock, not an iterable."""
    from unittest.mock import Mock

    import torch

    return Mock(spec=torch.nn.Module)


class ClaimsModule:
    """Says it is a torch module through __class__; any attribute asked raises."""

    @property
    def __class__(self):
        import torch

        return torch.nn.Module

    def __getattr__(self, name):
        raise RuntimeError(f"boom {name}")


def make_liar(spec):
    return ClaimsModule()


def make_failing_module(spec):
    """A real module whose parameters() raises: its tensors cannot be counted."""
    import torch

    class Failing(torch.nn.Linear):
        def parameters(self, recurse=True):
            raise RuntimeError("parameters are remote")

    return Failing(2, 2)


def make_proxy(spec):
    import torch

    return weakref.proxy(torch.nn.Linear(2, 2))  # dead at once: nothing else holds the module


def test_a_loader_returning_a_mock_a_liar_or_a_proxy_loads_or_is_one_line(manager):
    """On the old code: TypeError: 'Mock' object is not iterable, the liar's own RuntimeError, and a bare
    ReferenceError."""
    import torch  # noqa: F401 - the walk looks for torch modules only once torch is imported

    for name in ("spec_mock", "liar"):  # counted as what can be counted: no tensor
        manager.register(name, loader=f"test_loader_models:make_{name}")
        manager.load(name)
        assert manager.row(name).state == "loaded" and manager.unload(name).collected
    manager.register("declared", loader="test_loader_models:make_failing_module", required_memory="1MB")
    manager.load("declared")
    assert manager.row("declared").counted_bytes == 1_000_000
    counted = "cannot be counted (RuntimeError: parameters are remote): declare its size with required_memory"
    for name, said in (("failing_module", counted), ("proxy", "returned a weak proxy for 'proxy'")):
        manager.register(name, loader=f"test_loader_models:make_{name}")
        with pytest.raises(ModelLoadingError) as caught:
            manager.load(name)
        assert said in str(caught.value) and f"test_loader_models:make_{name}" in str(caught.value)
        assert "\n" not in str(caught.value) and manager.row(name).state in ("failed", "registered")
