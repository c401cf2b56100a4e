"""Memory estimates from metadata: headers, shards, dtype, quantization, KV cache."""

import json

import pytest

from jupyter_llm_manager import ModelLoadingError, ModelSpec
from jupyter_llm_manager.estimates import estimate_checkpoint, read_safetensors_header


def spec_for(folder, **fields):
    return ModelSpec.from_mapping("m", {"source": str(folder), **fields})


def test_weights_follow_the_target_dtype(tiny_models):
    full = estimate_checkpoint(spec_for(tiny_models["a"]))
    half = estimate_checkpoint(spec_for(tiny_models["a"], dtype="float16"))
    assert full.parameters == half.parameters > 0
    assert full.weights_bytes == 4 * full.parameters and half.weights_bytes == 2 * full.parameters
    assert "as float16" in half.weights_method and "stored dtypes" in full.weights_method


def test_quantization_shrinks_linear_layers_only(tiny_models):
    full = estimate_checkpoint(spec_for(tiny_models["a"], dtype="float16"))
    four = estimate_checkpoint(spec_for(tiny_models["a"], dtype="float16", quantization="4bit"))
    eight = estimate_checkpoint(spec_for(tiny_models["a"], dtype="float16", quantization="8bit"))
    assert four.weights_bytes < eight.weights_bytes < full.weights_bytes
    header = read_safetensors_header(tiny_models["a"] / "model.safetensors")
    kept = sum(2 * info["shape"][0] * (info["shape"][1] if len(info["shape"]) > 1 else 1)
               for name, info in header.items() if "embed" in name or "lm_head" in name or "norm" in name)
    assert four.weights_bytes > kept  # embeddings, head and norms stay at float16


def test_kv_cache_formula(tiny_models):
    config = json.loads((tiny_models["b"] / "config.json").read_text())
    estimate = estimate_checkpoint(spec_for(tiny_models["b"], max_context=100, dtype="float16"))
    head_dim = config["hidden_size"] // config["num_attention_heads"]
    assert estimate.kv_cache_bytes == 2 * config["num_hidden_layers"] * config["num_key_value_heads"] * head_dim * 100 * 2
    assert "100 tokens (max_context)" in estimate.kv_cache_method


def test_sharded_checkpoints_are_read_through_their_index(tiny_models, tmp_path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_models["b"])
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    sharded = estimate_checkpoint(spec_for(tmp_path / "sharded"))
    single = estimate_checkpoint(spec_for(tiny_models["b"]))
    assert sharded.weights_bytes == single.weights_bytes and "shards" in sharded.weights_method


def test_required_memory_overrides_the_total(tiny_models):
    estimate = estimate_checkpoint(spec_for(tiny_models["a"], required_memory="2GB"))
    assert estimate.total_bytes == 2 * 1000**3 and "required_memory" in estimate.overhead_method


def test_no_metadata_offline_is_unknown_not_an_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    estimate = estimate_checkpoint(ModelSpec.from_mapping("hub", {"source": "org/never-downloaded"}))
    assert not estimate.known and estimate.total_str == "unknown" and "unknown" in estimate.weights_method


def test_a_corrupted_header(tiny_models, tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_models["a"] / "config.json").read_text())
    (folder / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    with pytest.raises(ModelLoadingError, match="corrupted"):
        estimate_checkpoint(spec_for(folder))
