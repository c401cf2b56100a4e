"""Memory estimates from metadata: headers, shards, dtype, quantization, KV cache."""

import json
import struct

import pytest
from jlm_helpers.children import run_child

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


# -- hostile headers: the work is linear in the header (issue 31, items 5 and 12) ----------------------------

def _weights_file(folder, tensors, data: int = 64) -> None:
    raw = json.dumps(tensors).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(data))


def test_a_tensor_with_300000_dimensions_is_refused_at_once_by_every_view(tiny_models, tmp_path):
    """A 3.6 MB header with one tensor of 300,000 dimensions took minutes (quadratic) in estimate, status and
    list; it is refused in a moment. Run in a child: the old code would hang the test run."""
    folder = tmp_path / "dims"
    folder.mkdir()
    (folder / "config.json").write_text((tiny_models["a"] / "config.json").read_text())
    _weights_file(folder, {"w": {"dtype": "F32", "shape": [7] * 300_000, "data_offsets": [0, 64]}})
    answer = run_child(f"""
        import json, time
        from jupyter_llm_manager import LLMManager, ModelLoadingError
        manager = LLMManager(config_path=False, preload=False)
        manager.register("m", source={str(folder)!r})
        started = time.monotonic()
        try:
            manager.estimate("m")
            error = None
        except ModelLoadingError as caught:
            error = str(caught)
        rows = manager.status()
        print(json.dumps({{"error": error, "seconds": time.monotonic() - started, "rows": len(rows)}}))
    """, timeout=60)
    assert answer["error"] and "dimensions" in answer["error"] and "\n" not in answer["error"]
    assert answer["seconds"] < 5 and answer["rows"] == 1


def test_an_ordinary_header_of_many_tensors_is_read_in_linear_time(tmp_path):
    """100,000 tensors of four dimensions (a 10 MB header): checked, counted, in well under the time the
    quadratic product of one long shape took."""
    tensors, offset = {}, 0
    for index in range(100_000):
        tensors[f"layer.{index}.weight"] = {"dtype": "F16", "shape": [1, 2, 2, 2], "data_offsets": [offset, offset + 16]}
        offset += 16
    _weights_file(tmp_path, tensors, data=offset)
    estimate = estimate_checkpoint(spec_for(tmp_path))
    assert estimate.parameters == 800_000 and estimate.weights_bytes == 2 * 800_000


@pytest.mark.parametrize("tensor, said", [
    ({"dtype": "F32", "shape": [-1024, 65536], "data_offsets": [0, 64]}, "at least 0"),
    ({"dtype": "F32", "shape": [4, 4], "data_offsets": [0, 32]}, "holds 32 bytes"),
    ({"dtype": "F32", "shape": [True, 16], "data_offsets": [0, 64]}, "whole number"),
    ({"dtype": "F32", "shape": [2**62, 2**62], "data_offsets": [0, 64]}, "more values"),
    ({"dtype": "F32", "shape": [16], "data_offsets": [-64, 0]}, "outside"),
    ({"dtype": 5, "shape": [16], "data_offsets": [0, 64]}, "dtype"),
])
def test_a_header_that_lies_about_its_tensors_is_one_line_never_a_negative_estimate(tmp_path, tensor, said):
    _weights_file(tmp_path, {"w": tensor})
    with pytest.raises(ModelLoadingError, match=said) as raised:
        estimate_checkpoint(spec_for(tmp_path))
    assert "\n" not in str(raised.value)


def test_a_permission_error_names_the_file_and_says_what_it_is(tiny_models, tmp_path, monkeypatch):
    """Not "fetch it again" (the file is there): which path this user may not read. (As root too: simulated.)"""
    from jupyter_llm_manager.estimates import safetensors

    def refused(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(safetensors, "open_regular", refused)
    with pytest.raises(ModelLoadingError, match="permission denied") as raised:
        estimate_checkpoint(spec_for(tiny_models["a"]))
    assert str(tiny_models["a"] / "model.safetensors") in str(raised.value)
    assert "fetch it again" not in str(raised.value)


@pytest.mark.parametrize("config", ['{"num_hidden_layers": "ab", "num_attention_heads": 4, "hidden_size": 64}',
                                    '{"num_hidden_layers": 1e300, "num_attention_heads": 4, "hidden_size": 64}',
                                    '{"num_hidden_layers": 2, "num_attention_heads": 0, "hidden_size": 64}',
                                    '{"text_config": 5}', "[" * 100_000 + "]" * 100_000])
def test_a_config_json_with_nonsense_counts_leaves_the_kv_cache_unknown_not_a_type_error(tiny_models, tmp_path, config):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "model.safetensors").write_bytes((tiny_models["a"] / "model.safetensors").read_bytes())
    (folder / "config.json").write_text(config)
    estimate = estimate_checkpoint(spec_for(folder))
    assert estimate.kv_cache_bytes == 0 and "unknown" in estimate.kv_cache_method and estimate.weights_bytes > 0
