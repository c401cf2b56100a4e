"""Hub ids: a model already in the Hugging Face cache estimates and loads offline; online metadata."""

from __future__ import annotations

import shutil

import pytest

from jupyter_llm_manager import LLMManager, ModelSpec
from jupyter_llm_manager.estimates import estimate_checkpoint


@pytest.fixture
def hub_cache(tmp_path, tiny_models, monkeypatch):
    """A real cache layout (models--org--name/snapshots/<commit>, refs/main) holding tiny model 'a'."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--tiny-org--tiny-chat"
    shutil.copytree(tiny_models["a"], repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return "tiny-org/tiny-chat"


def test_a_cached_hub_model_is_estimated_from_its_cached_headers(hub_cache, tiny_models):
    cached = estimate_checkpoint(ModelSpec.from_mapping("hub", {"source": hub_cache}))
    local = estimate_checkpoint(ModelSpec.from_mapping("local", {"source": str(tiny_models["a"])}))
    assert cached.known and cached.weights_bytes == local.weights_bytes
    assert cached.kv_cache_bytes == local.kv_cache_bytes


def test_a_cached_hub_model_loads_and_generates_offline(hub_cache):
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("chat", source=hub_cache)
        result = manager.generate("chat", "Hello", max_new_tokens=4, min_new_tokens=4)
        assert result.completion_tokens == 4
        assert manager.row("chat").actual_bytes == pytest.approx(manager.estimate("chat").weights_bytes, rel=0.01)
    finally:
        manager.close()


def test_online_hub_metadata_is_read_without_downloading_weights(monkeypatch):
    import huggingface_hub
    from huggingface_hub import constants
    from huggingface_hub.utils import SafetensorsFileMetadata, SafetensorsRepoMetadata, TensorInfo

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    tensors = {"model.embed_tokens.weight": TensorInfo("BF16", [32000, 4096], (0, 1)),
               "model.layers.0.mlp.up_proj.weight": TensorInfo("BF16", [11008, 4096], (1, 2))}
    metadata = SafetensorsRepoMetadata(None, False, {}, {"model.safetensors": SafetensorsFileMetadata({}, tensors)})
    asked = []

    def fake_metadata(repo_id, revision=None, token=None):
        asked.append((repo_id, revision, token))
        return metadata

    def no_config(*args, **kwargs):
        raise OSError("config.json not reachable in this test")

    monkeypatch.setattr(huggingface_hub, "get_safetensors_metadata", fake_metadata)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", no_config)
    monkeypatch.setenv("HF_TOKEN", "hf_abc")
    spec = ModelSpec.from_mapping("llama", {"source": "meta-llama/Llama-2-7b-hf", "token": "${HF_TOKEN}",
                                            "revision": "v1"})
    estimate = estimate_checkpoint(spec)
    parameters = 32000 * 4096 + 11008 * 4096
    assert estimate.weights_bytes == 2 * parameters and estimate.parameters == parameters
    assert "Hub safetensors metadata" in estimate.weights_method
    assert "unknown" in estimate.kv_cache_method  # the config was unreachable: said, not guessed
    assert asked == [("meta-llama/Llama-2-7b-hf", "v1", "hf_abc")]
