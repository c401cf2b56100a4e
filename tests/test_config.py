"""The YAML registry: three layouts, clear errors, secrets, atomic and merged saves."""

from __future__ import annotations

import multiprocessing
import os
import textwrap

import pytest
import yaml

from jupyter_llm_manager import ConfigurationError, LLMManager, ModelSpec
from jupyter_llm_manager.config.files import find_config_path, load_config, save_config

GB = 1000**3


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return path


@pytest.fixture
def models_dir(tmp_path):
    for name in ("tiny-a", "tiny-b"):
        (tmp_path / name).mkdir()
    return tmp_path


def test_our_layout(tmp_path, models_dir, monkeypatch):
    path = write(tmp_path / "llm.yaml", f"""
        defaults: {{max_loaded_models: 2, memory_fraction: 0.8, keep_alive: 30m, default_model: chat}}
        models:
          model_a:
            source: {models_dir}/tiny-a
            dtype: bf16
            quantization: null
            token: ${{HF_TOKEN}}
            max_context: 4096
            pinned: true
            priority: 3
            generation: {{max_new_tokens: 256, temperature: 0.7}}
          big_remote:
            backend: openai
            base_url: http://gpu-cluster:8000/v1
            model: meta-llama/Llama-3.1-405B-Instruct
            api_key: ${{CLUSTER_KEY}}
        aliases: {{chat: model_a}}
        """)
    registry = load_config(path)
    spec = registry.models["model_a"]
    assert (spec.dtype, spec.pinned, spec.priority, spec.max_context) == ("bfloat16", True, 3, 4096)
    assert spec.generation == {"max_new_tokens": 256, "temperature": 0.7}
    assert registry.settings.keep_alive == 1800 and registry.settings.max_loaded_models == 2
    assert registry.aliases == {"chat": "model_a"} and registry.layout == "ours"
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value")
    assert spec.token.resolve() == "hf_secret_value"  # resolved only when asked, from the environment
    assert "hf_secret_value" not in repr(spec) and "${HF_TOKEN}" in repr(spec)
    remote = registry.models["big_remote"]
    assert remote.backend == "openai" and remote.model == "meta-llama/Llama-3.1-405B-Instruct"


def test_a_mapping_of_models_as_other_managers_write_it(tmp_path, models_dir):
    path = write(tmp_path / "old.yaml", f"""
        llama:
          model_name: meta-llama/Llama-2-7b-chat-hf
          type: huggingface
          device: cuda
          config: {{torch_dtype: float16, load_in_4bit: true, low_cpu_mem_usage: true}}
        local:
          model_name: {models_dir}/tiny-a
          type: transformers
          device: cpu
          config: {{}}
        """)
    registry = load_config(path)
    assert registry.layout == "model-mapping"
    llama = registry.models["llama"]
    assert (llama.source, llama.backend, llama.device, llama.dtype, llama.quantization) == (
        "meta-llama/Llama-2-7b-chat-hf", "transformers", "cuda", "float16", "4bit")
    assert llama.load_kwargs == {"low_cpu_mem_usage": True}
    assert registry.models["local"].device == "cpu"


def test_a_list_of_models_as_other_managers_write_it(tmp_path, models_dir):
    path = write(tmp_path / "old-list.yaml", f"""
        models:
          - model_id: mistral
            source_type: huggingface
            source_path: mistralai/Mistral-7B-Instruct-v0.2
            revision: main
            model_format: safetensors
            quantization_bits: 8
            device_preference: cuda
            required_gpu_memory_mb: 9000
            required_ram_mb: 2000
            custom_loader_params: {{attn_implementation: sdpa}}
            tokenizer_path: mistralai/Mistral-7B-Instruct-v0.2
            trust_remote_code: false
          - model_id: local-tiny
            source_type: local
            source_path: {models_dir}/tiny-b
            device_preference: cpu
            required_ram_mb: 100
        """)
    registry = load_config(path)
    assert registry.layout == "model-list"
    mistral = registry.models["mistral"]
    assert (mistral.quantization, mistral.device, mistral.revision) == ("8bit", "cuda", "main")
    assert mistral.required_memory == 9000 * 1024 * 1024
    assert mistral.load_kwargs == {"attn_implementation": "sdpa", "use_safetensors": True}
    assert mistral.tokenizer == "mistralai/Mistral-7B-Instruct-v0.2"
    local = registry.models["local-tiny"]
    assert local.required_memory == 100 * 1024 * 1024 and local.local_path == (models_dir / "tiny-b").resolve()


@pytest.mark.parametrize("text, expected", [
    ("models:\n  a: {source: org/x, dtyp: float16}\n", ["llm.yaml", "model 'a'", "'dtyp'", "did you mean 'dtype'"]),
    ("models:\n  - model_id: a\n    source_path: org/x\n    device_prefernce: cpu\n",
     ["model 'a'", "'device_prefernce'", "'device_preference'"]),
    ("a:\n  model_name: org/x\n  devise: cpu\n", ["model 'a'", "'devise'", "'device'"]),
    ("defaults: {keep_alive: 30 minutes}\n", ["keep_alive", "30m"]),
    ("defaults: {max_loaded: 2}\n", ["'max_loaded'", "max_loaded_models"]),
    ("modles: {}\n", ["'modles'", "'models'"]),
    ("models:\n  a: {source: org/x, max_context: many}\n", ["max_context", "integer"]),
    ("models:\n  a: {source: org/x, pinned: yes please}\n", ["pinned", "true or false"]),
    ("models:\n  a: {source: org/x}\naliases: {b: nope}\n", []),
])
def test_bad_files_name_the_file_model_key_and_closest_key(tmp_path, text, expected):
    path = write(tmp_path / "llm.yaml", text)
    if not expected:
        with pytest.raises(ConfigurationError, match="'nope'"):
            LLMManager(config_path=path, preload=False)
        return
    with pytest.raises(ConfigurationError) as caught:
        load_config(path)
    for fragment in expected:
        assert fragment in str(caught.value)


def test_a_yaml_syntax_error_names_the_line(tmp_path):
    path = write(tmp_path / "llm.yaml", "models:\n  a:\n    source: org/x\n    dtype: [float16\n")
    with pytest.raises(ConfigurationError, match=r"llm.yaml, line \d+: invalid YAML"):
        load_config(path)


def test_a_truncated_file_and_wrong_types(tmp_path):
    with pytest.raises(ConfigurationError, match="invalid YAML"):
        load_config(write(tmp_path / "t.yaml", "models:\n  a: {source: org/x, dtype: fl"))
    with pytest.raises(ConfigurationError, match="must hold a mapping"):
        load_config(write(tmp_path / "list.yaml", "- a\n- b\n"))
    with pytest.raises(ConfigurationError, match="models must be a mapping"):
        load_config(write(tmp_path / "m.yaml", "models: 3\n"))


def test_a_file_that_does_not_exist_yet_starts_empty_and_is_created_on_the_first_save(tmp_path):
    path = tmp_path / "new" / "folder" / "llm.yaml"
    manager = LLMManager(config_path=path, preload=False)
    try:
        assert manager.ids() == [] and manager.config_path == path and not path.exists()
        manager.register("m", source="org/m", persist=True)
        assert "org/m" in path.read_text()
    finally:
        manager.close()


def test_an_empty_file_is_an_empty_registry(tmp_path):
    registry = load_config(write(tmp_path / "empty.yaml", ""))
    assert registry.models == {} and registry.layout == "empty"


def test_search_order(tmp_path, monkeypatch):
    explicit, from_env = tmp_path / "explicit.yaml", tmp_path / "env.yaml"
    monkeypatch.setenv("JUPYTER_CONFIG_DIR", str(tmp_path / "jc"))
    assert find_config_path() is None
    default = tmp_path / "jc" / "llm_manager.yaml"
    default.parent.mkdir()
    default.write_text("")
    assert find_config_path() == default
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(from_env))
    assert find_config_path() == from_env
    assert find_config_path(explicit) == explicit


def test_constructor_arguments_override_the_file_defaults(tmp_path):
    path = write(tmp_path / "llm.yaml", "defaults: {max_loaded_models: 3, keep_alive: 1h}\n")
    assert LLMManager(config_path=path, preload=False).max_loaded_models == 3
    manager = LLMManager(max_loaded_models=1, keep_alive=None, config_path=path, preload=False)
    assert manager.max_loaded_models == 1 and manager.keep_alive is None


# -- saving ----------------------------------------------------------------------------------

def test_save_round_trip_keeps_secrets_as_references(tmp_path, models_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_very_secret")
    path = tmp_path / "llm.yaml"
    manager = LLMManager(config_path=False, preload=False, keep_alive="15m")
    manager.register("a", source=str(models_dir / "tiny-a"), token="${HF_TOKEN}", dtype="fp16", priority=2,
                     generation={"temperature": 0.2})
    manager.register("literal", source="org/model", token="hf_typed_in_clear")
    manager.alias("chat", "a")
    manager.save(path)
    text = path.read_text()
    assert "hf_very_secret" not in text and "hf_typed_in_clear" not in text
    assert "${HF_TOKEN}" in text
    again = LLMManager(config_path=path, preload=False)
    assert again.spec("a") == manager.spec("a") and again.resolve("chat") == "a"
    assert again.spec("literal").token is None  # a literal secret is never written
    assert again.keep_alive == 900


def test_register_with_persist_writes_only_that_model(tmp_path, models_dir):
    path = write(tmp_path / "llm.yaml", "models:\n  other: {source: org/other}\n")
    manager = LLMManager(config_path=path, preload=False)
    manager.register("scratch", source="org/scratch")
    manager.register("kept", source="org/kept", persist=True)
    saved = yaml.safe_load(path.read_text())
    assert set(saved["models"]) == {"other", "kept"}


def test_save_merges_with_what_another_kernel_saved(tmp_path):
    path = tmp_path / "llm.yaml"
    first = LLMManager(config_path=False, preload=False)
    second = LLMManager(config_path=False, preload=False)
    first.register("from-first", source="org/one")
    second.register("from-second", source="org/two")
    first.save(path)
    second.save(path)
    assert set(load_config(path).models) == {"from-first", "from-second"}
    first.unregister("from-first")
    first.save(path)
    assert set(load_config(path).models) == {"from-second"}


def test_saving_a_file_of_another_layout_converts_it_and_keeps_a_backup(tmp_path):
    path = write(tmp_path / "old.yaml", "llama:\n  model_name: org/llama\n  type: hf\n  device: cpu\n  config: {}\n")
    original = path.read_text()
    manager = LLMManager(config_path=path, preload=False)
    manager.register("new", source="org/new", persist=True)
    assert (tmp_path / "old.yaml.bak").read_text() == original
    registry = load_config(path)
    assert registry.layout == "ours" and set(registry.models) == {"llama", "new"}


def test_a_read_only_folder_is_a_clear_error(tmp_path, monkeypatch):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    if os.geteuid() == 0:  # root writes anywhere: give the error the OS gives everyone else
        import filelock

        def refuse(self, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(folder))

        monkeypatch.setattr(filelock.FileLock, "acquire", refuse)
    try:
        manager = LLMManager(config_path=False, preload=False)
        manager.register("a", source="org/a")
        with pytest.raises(ConfigurationError, match="cannot write the file .Permission denied"):
            manager.save(folder / "llm.yaml")
    finally:
        folder.chmod(0o700)
    assert not (folder / "llm.yaml").exists()


def test_a_crash_in_the_middle_of_a_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "llm.yaml"
    save_config(path, {"a": ModelSpec.from_mapping("a", {"source": "org/a"})}, {})
    original = path.read_text()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(ConfigurationError, match="disk full"):
        save_config(path, {"b": ModelSpec.from_mapping("b", {"source": "org/b"})}, {})
    assert path.read_text() == original
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def _save_many(path: str, prefix: str, count: int) -> None:
    for index in range(count):
        spec = ModelSpec.from_mapping(f"{prefix}-{index}", {"source": f"org/{prefix}-{index}"})
        save_config(path, {spec.id: spec}, {})


def test_two_processes_saving_at_once_lose_no_update(tmp_path):
    path = str(tmp_path / "shared.yaml")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_save_many, args=(path, name, 15)) for name in ("left", "right")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    saved = load_config(path).models
    assert len(saved) == 30 and {f"left-{i}" for i in range(15)} <= set(saved)


def test_an_alias_may_be_named_before_the_alias_it_points_to(tmp_path):
    path = write(tmp_path / "llm.yaml", "models:\n  m: {source: org/m}\naliases: {first: second, second: m}\n")
    assert LLMManager(config_path=path, preload=False).resolve("first") == "m"
    path = write(tmp_path / "cycle.yaml", "models:\n  m: {source: org/m}\naliases: {a: b, b: a}\n")
    with pytest.raises(ConfigurationError, match="alias cycle"):
        LLMManager(config_path=path, preload=False)
