"""Injected faults, hostile input and secrets: the manager keeps working and loses nothing."""

from __future__ import annotations

import _thread
import gc
import logging
import multiprocessing
import os
import signal
import threading
import time
import weakref

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jlm_helpers.fakes import GB, FakeBackend, FakeClock, FakeDevices

from jupyter_llm_manager import (
    ConfigurationError,
    GenerationError,
    InvalidGenerationParameters,
    LLMManager,
    ModelLoadingError,
    ModelSpec,
    ResourceNotAvailableError,
)
from jupyter_llm_manager.config.files import load_config, save_config

# -- faults in the real load path ----------------------------------------------------------------

class FailingLoad:
    """Replaces from_pretrained: allocates like a real load, then fails (or blocks until interrupted)."""

    def __init__(self, monkeypatch, error=None, block=False, times=1):
        import torch
        import transformers

        self.original = transformers.AutoModelForCausalLM.from_pretrained
        self.allocated: list[weakref.ref] = []
        self.started = threading.Event()  # set once the half-loaded weights exist
        self.remaining = times
        outer = self

        def from_pretrained(*args, **kwargs):
            if outer.remaining <= 0:
                return outer.original(*args, **kwargs)
            outer.remaining -= 1
            half_loaded = torch.empty(8 * 1024 * 1024)  # 32 MB of weights read before it fails
            outer.allocated.append(weakref.ref(half_loaded))
            outer.started.set()
            if block:
                deadline = time.monotonic() + 30
                while time.monotonic() < deadline:
                    time.sleep(0.01)  # a slow read, interruptible as a real one is
            raise error

        monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)

    def all_released(self) -> bool:
        """The fault really allocated, and nothing it allocated is alive any more."""
        gc.collect()
        return bool(self.allocated) and all(ref() is None for ref in self.allocated)


@pytest.fixture
def other_loaded(real_manager):
    real_manager.load("b")
    return real_manager


def test_a_load_that_raises_halfway_leaves_no_trace(other_loaded, monkeypatch):
    manager = other_loaded
    fault = FailingLoad(monkeypatch, error=RuntimeError("safetensors: unexpected end of file"))
    with pytest.raises(ModelLoadingError, match="could not load 'a'.*unexpected end of file"):
        manager.load("a")
    assert fault.all_released()
    assert manager.row("a").state == "failed" and manager.row("a").actual_bytes is None
    assert manager.generate("b", "still here", max_new_tokens=2, min_new_tokens=2).completion_tokens == 2
    manager.load("a")  # the next load of the same model succeeds
    assert manager.row("a").state == "loaded" and manager.row("a").error is None


def test_out_of_memory_during_a_load_evicts_and_retries_once(other_loaded, monkeypatch):
    import torch

    manager = other_loaded
    fault = FailingLoad(monkeypatch, error=torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"))
    manager.load("a")  # first try fails; 'b' is evicted; the retry loads
    assert fault.all_released()
    assert manager.row("a").state == "loaded" and manager.row("b").state == "registered"
    assert [e.reason for e in manager.events() if e.kind == "evicted"] == ["budget"]


def test_out_of_memory_after_the_retry_is_a_resource_error_that_says_what_to_do(other_loaded, monkeypatch):
    import torch

    manager = other_loaded
    manager.pin("b")
    fault = FailingLoad(monkeypatch, error=torch.OutOfMemoryError("CUDA out of memory"), times=2)
    with pytest.raises(ResourceNotAvailableError) as caught:
        manager.load("a")
    message = str(caught.value)
    assert "ran out of memory during the load" in message and "nvidia-smi" in message and "Unpin" in message
    assert fault.all_released() and manager.row("a").state == "registered"
    assert manager.generate("b", "pinned and fine", max_new_tokens=2, min_new_tokens=2).completion_tokens == 2


def test_an_interrupt_during_a_load_leaves_no_half_loaded_instance(real_manager, monkeypatch):
    fault = FailingLoad(monkeypatch, error=RuntimeError("not reached"), block=True)
    interrupter = threading.Thread(target=lambda: fault.started.wait(60) and _thread.interrupt_main())
    interrupter.start()
    with pytest.raises(KeyboardInterrupt) as caught:  # held, as a notebook keeps the last error
        real_manager.load("a")
    interrupter.join()
    assert fault.all_released() and caught.value is not None
    row = real_manager.row("a")
    assert (row.state, row.in_use, row.error) == ("registered", 0, None)
    assert real_manager.generate("a", "after the interrupt", max_new_tokens=2, min_new_tokens=2).completion_tokens == 2


def test_the_reaper_waits_for_a_lease_to_end(tiny_models):
    clock = FakeClock()
    manager = LLMManager(keep_alive=0.2, config_path=False, preload=False, clock=clock)
    try:
        manager.register("a", source=str(tiny_models["a"]))
        evicted_at = []
        evicted = threading.Event()

        def on_event(event):
            if event.kind == "evicted" and event.reason == "keep_alive":
                evicted_at.append(clock())
                evicted.set()

        manager.subscribe(on_event)
        with manager.use("a"):
            clock.advance(3600)  # far longer than the keep-alive, while the reaper runs: the model must stay
            assert manager.expire_idle() == [] and manager.row("a").state == "loaded"
            released_at = clock()
        clock.advance(1)
        assert evicted.wait(10) and evicted_at[0] >= released_at
    finally:
        manager.close()


def test_free_memory_shrinking_between_estimate_and_load_is_a_clear_error(clock):
    class Shrinking(FakeDevices):
        """Another kernel takes the GPU right after the placement looked at it."""

        calls = 0

        def __call__(self):
            Shrinking.calls += 1
            if Shrinking.calls > 1:
                self.others["cuda:0"] = 22 * GB
            return super().__call__()

    devices = Shrinking()
    backend = FakeBackend(devices)
    manager = LLMManager(config_path=False, preload=False, device_probe=devices, backend_factory=lambda n: backend,
                         clock=clock)
    try:
        manager.register("m", "fake/m", backend="fake", device="auto", options={"size": 4 * GB, "check_free": True})
        with pytest.raises(ResourceNotAvailableError, match="on cuda:0 it needs 4.0 GB but only 2.0 GB"):
            manager.load("m")
        assert manager.row("m").state == "registered" and backend.loads == []
    finally:
        manager.close()


# -- hostile prompts -------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", [
    "{{}} {\"a\": [1, {\"b\": null}]} }}{{ ${HOME} $(rm -rf /) `ls` \\x00",
    "\x00\x01\x02\x1b[31mred\x1b[0m \x7f" + "".join(chr(i) for i in range(32)) + "ÿ" * 20 + "\U0001F600",
    "word " * 30,
])
def test_prompts_with_braces_and_binary_junk_are_sent_safely(real_manager, prompt):
    result = real_manager.generate("a", prompt, raw=True, max_new_tokens=2, min_new_tokens=2)
    assert result.completion_tokens == 2


def test_invalid_unicode_is_refused_before_anything_runs(real_manager):
    broken = b"caf\xe9 \xff binary".decode("utf-8", errors="surrogateescape")
    with pytest.raises(InvalidGenerationParameters, match="not valid Unicode text at position 3"):
        real_manager.generate("a", broken)
    assert real_manager.row("a").state == "registered"


# A prompt longer than the context: tests/test_transformers_backend.py::test_the_context_rule.


# -- the configuration file ------------------------------------------------------------------------

def _save_forever(path: str, prefix: str) -> None:
    index = 0
    while True:
        spec = ModelSpec.from_mapping(f"{prefix}-{index % 50}", {"source": f"org/{prefix}-{index}",
                                                                 "generation": {"max_new_tokens": index % 500 + 1}})
        save_config(path, {spec.id: spec}, {})
        index += 1


def test_a_process_killed_in_the_middle_of_saves_never_corrupts_the_file(tmp_path):
    path = str(tmp_path / "shared.yaml")
    save_config(path, {"keep": ModelSpec.from_mapping("keep", {"source": "org/keep"})}, {})
    context = multiprocessing.get_context("spawn")
    for round_index in range(6):
        saver = context.Process(target=_save_forever, args=(path, f"r{round_index}"))
        saver.start()
        deadline = time.monotonic() + 30
        while not os.path.exists(path + ".lock") or os.path.getsize(path) < 200:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        time.sleep(0.05 + 0.03 * round_index)  # kill at a different point of a save each round
        os.kill(saver.pid, signal.SIGKILL)
        saver.join()
        registry = load_config(path)  # always parseable, never half written
        assert "keep" in registry.models
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    assert len(leftovers) <= 6  # a killed writer may leave its temporary file, never a broken target


_ids = st.from_regex(r"[a-z][a-z0-9_-]{0,12}", fullmatch=True)
_specs = st.fixed_dictionaries(
    {"source": st.from_regex(r"[a-z0-9]{1,8}/[a-z0-9.-]{1,12}", fullmatch=True)},
    optional={"dtype": st.sampled_from(["auto", "float16", "bfloat16", "float32"]),
              "device": st.sampled_from(["auto", "cpu", "cuda", "cuda:1", "balanced"]),
              "quantization": st.sampled_from([None, "4bit", "8bit"]),
              "revision": st.from_regex(r"[a-z0-9]{1,10}", fullmatch=True),
              "priority": st.integers(-5, 5), "pinned": st.booleans(), "preload": st.booleans(),
              "max_context": st.integers(1, 10**6), "trust_remote_code": st.booleans(),
              "keep_alive": st.sampled_from(["30m", "1h", "never", "45s"]),
              "token": st.from_regex(r"\$\{[A-Z][A-Z0-9_]{0,10}\}", fullmatch=True),
              "generation": st.fixed_dictionaries({}, optional={"max_new_tokens": st.integers(1, 4096),
                                                                "temperature": st.floats(0, 2),
                                                                "stop": st.lists(st.text(min_size=1, max_size=5),
                                                                                 max_size=2)}),
              "load_kwargs": st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                                             st.integers() | st.booleans() | st.text(max_size=10), max_size=2)})


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(models=st.dictionaries(_ids, _specs, min_size=1, max_size=5), data=st.data())
def test_config_round_trip_load_save_load_gives_the_same_registry(tmp_path_factory, models, data):
    folder = tmp_path_factory.mktemp("roundtrip")
    specs = {model_id: ModelSpec.from_mapping(model_id, entry) for model_id, entry in models.items()}
    alias_names = data.draw(st.lists(_ids.filter(lambda n: n not in specs), max_size=3, unique=True))
    aliases = {name: data.draw(st.sampled_from(sorted(specs))) for name in alias_names}
    save_config(folder / "first.yaml", specs, aliases)
    first = load_config(folder / "first.yaml")
    save_config(folder / "second.yaml", first.models, first.aliases)
    second = load_config(folder / "second.yaml")
    assert first.models == specs == second.models
    assert first.aliases == aliases == second.aliases


# -- security ------------------------------------------------------------------------------------

def test_trust_remote_code_is_off_by_default_and_marked_where_it_is_on(real_manager, tiny_models, caplog):
    from jupyter_llm_manager.frontends.dashboard import Dashboard

    assert all(not real_manager.spec(i).trust_remote_code for i in ("a", "b"))
    real_manager.register("trusting", source=str(tiny_models["a"]), trust_remote_code=True)
    with caplog.at_level(logging.WARNING):
        real_manager.load("trusting")
    assert "'trusting' runs code from its repository" in caplog.text
    board = Dashboard(real_manager, background=False)
    try:
        assert "remote code" in board._rows["trusting"].cells[0].value
        assert "remote code" not in board._rows["a"].cells[0].value
    finally:
        board.close()


SECRETS = {"HF_TOKEN_VALUE": "hf_SeCrEtToKeN_9d8f7a", "CLUSTER_KEY_VALUE": "sk-cluster-SeCrEt-4242",
           "INLINE": "sk-inline-SeCrEt-1111", "HEADER": "team-SeCrEt-header-77"}


def test_no_string_the_project_produces_contains_a_secret(tmp_path, tiny_models, monkeypatch, caplog, shell_with):
    from IPython.utils.capture import capture_output

    from jupyter_llm_manager.frontends.dashboard import Dashboard

    monkeypatch.setenv("HF_TOKEN_VALUE", SECRETS["HF_TOKEN_VALUE"])
    monkeypatch.setenv("CLUSTER_KEY_VALUE", SECRETS["CLUSTER_KEY_VALUE"])
    monkeypatch.setenv("HEADER_VALUE", SECRETS["HEADER"])
    produced: list[str] = []
    manager = LLMManager(config_path=False, preload=False)
    caplog.set_level(logging.DEBUG)
    try:
        manager.register("local", source=str(tiny_models["a"]), token="${HF_TOKEN_VALUE}", persist=False)
        manager.register("remote", backend="openai", base_url="http://127.0.0.1:9/v1", api_key="${CLUSTER_KEY_VALUE}",
                         headers={"X-Team": "${HEADER_VALUE}"}, max_retries=0, timeout=3)
        manager.register("inline", backend="openai", base_url="http://127.0.0.1:9/v1", api_key=SECRETS["INLINE"],
                         max_retries=0, timeout=3)
        manager.alias("chat", "local")
        manager.generate("chat", "Hi", max_new_tokens=2)
        for model_id in ("remote", "inline"):
            with pytest.raises(ModelLoadingError) as caught:
                manager.load(model_id)
            produced += [str(caught.value), repr(caught.value)]
        produced += [repr(manager.spec(i)) for i in ("local", "remote", "inline")]
        produced += [str(manager.spec(i).to_mapping()) for i in ("local", "remote", "inline")]
        produced += [repr(row) for row in manager.status()] + [repr(d) for d in manager.devices()]
        produced += [repr(e) + str(e) for e in manager.events(None)]
        produced += [repr(manager), str(manager.estimate("remote"))]
        produced.append(manager.save(tmp_path / "saved.yaml").read_text())
        board = Dashboard(manager, background=False)
        try:
            produced += [str(w.get_state()) for w in board._all_widgets()]
        finally:
            board.close()
        shell = shell_with(manager)
        with capture_output() as captured:
            for line in ("list", "status", "estimate remote", "config", "gc"):
                shell.run_line_magic("llm", line)
            shell.run_cell("%%llm remote\nHi")
        produced += [captured.stdout, captured.stderr] + [str(o.data) for o in captured.outputs]
    finally:
        manager.close()
    produced.append(caplog.text)
    everything = "\n".join(produced)
    assert "${CLUSTER_KEY_VALUE}" in everything  # references are shown, values never
    for name, value in SECRETS.items():
        assert value not in everything, f"the secret {name} leaked"


@pytest.mark.parametrize("source", ["$(touch {marker})", "`touch {marker}`", "{folder}/*", "$HOME/models",
                                    "{folder}/a;touch {marker}"])
def test_a_source_is_only_a_path_no_shell_no_globs(tmp_path, source, real_manager):
    marker = tmp_path / "pwned"
    text = source.format(marker=marker, folder=tmp_path)
    with pytest.raises(ConfigurationError):
        real_manager.register("hostile", source=text)
    assert not marker.exists()


def test_only_tilde_and_braced_env_references_are_expanded(tmp_path, tiny_models, monkeypatch):
    from jupyter_llm_manager.config.spec import expand_path

    monkeypatch.setenv("MODELS", str(tiny_models["a"].parent))
    monkeypatch.setenv("HOME", str(tmp_path))
    assert expand_path("${MODELS}/tiny-a") == str(tiny_models["a"])
    assert expand_path("~/x") == str(tmp_path / "x")
    assert expand_path("$MODELS/tiny-a") == "$MODELS/tiny-a"  # no bare-$ expansion
    assert expand_path("${UNSET_VARIABLE_XYZ}/a") == "${UNSET_VARIABLE_XYZ}/a"
    spec = ModelSpec.from_mapping("m", {"source": "${MODELS}/tiny-a"})
    assert spec.local_path == tiny_models["a"].resolve() and "${MODELS}" in yaml.safe_dump(spec.to_mapping())


# -- load and concurrency ------------------------------------------------------------------------

@pytest.mark.slow
def test_stress_eight_threads_for_thirty_seconds(tmp_path):
    from jlm_helpers.benchmarks import benchmark

    report = benchmark("stress").run_stress(threads=8, seconds=30, folder=tmp_path)
    print(report)
    assert sum(report.operations.values()) > 100 and report.invariant_checks > 20
    assert set(report.errors) <= {"ResourceNotAvailableError", "ModelInUseError"}
    assert report.unexpected == [] and report.violations == [] and report.deadlocks == []
    assert report.alive_after_unload_all == 0


@pytest.mark.parametrize("streaming", [False, True])
def test_out_of_memory_while_generating_frees_the_step_and_keeps_the_model(real_manager, monkeypatch, streaming):
    import torch

    real_manager.load("a")
    with real_manager.use("a") as lease:
        model_class = type(lease.model)
    original, activations = model_class.generate, []

    def generate_out_of_memory(self, *args, **kwargs):
        step = torch.empty(8 * 1024 * 1024)  # the activations of the step that failed
        activations.append(weakref.ref(step))
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")

    monkeypatch.setattr(model_class, "generate", generate_out_of_memory)
    with pytest.raises(GenerationError, match="ran out of memory while generating") as caught:
        if streaming:
            list(real_manager.stream("a", "Hi", max_new_tokens=4))
        else:
            real_manager.generate("a", "Hi", max_new_tokens=4)
    gc.collect()
    assert activations and activations[0]() is None and caught.value is not None
    monkeypatch.setattr(model_class, "generate", original)
    row = real_manager.row("a")
    assert row.state == "loaded" and row.in_use == 0
    assert real_manager.generate("a", "again", max_new_tokens=2, min_new_tokens=2).completion_tokens == 2


def test_reading_a_configuration_runs_no_code_and_contacts_nothing(tmp_path, tiny_models, monkeypatch):
    """preload warms only local models that run no code of their own; the others are said to load at first use."""
    ran = tmp_path / "ran"
    (tmp_path / "sneaky.py").write_text(f"import pathlib\ndef load(spec):\n    pathlib.Path({str(ran)!r}).touch()\n"
                                        "    return object()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_CONFIG", str(tmp_path / "llm.yaml"))
    (tmp_path / "llm.yaml").write_text(f"""
models:
  local: {{source: {tiny_models['a']}, preload: true}}
  code: {{loader: sneaky:load, preload: true}}
  repo: {{source: {tiny_models['b']}, trust_remote_code: true, preload: true}}
  server: {{backend: openai, base_url: 'http://127.0.0.1:9/v1', model: m, api_key: '${{HOME}}', preload: true}}
  hub: {{source: org/model, preload: true}}
""")
    manager = LLMManager(preload=True)
    try:
        assert manager.warmup.wait(60)
        assert manager.warmup.status.loaded == ("local",) and not ran.exists()
        assert {row.id: row.state for row in manager.status()} == {
            "local": "loaded", "code": "registered", "repo": "registered", "server": "registered", "hub": "registered"}
        (notice,) = manager.warmup.take_notices()
        assert "code, repo, server, hub" in notice and "load at first use" in notice
    finally:
        manager.close()


def test_a_slow_subscriber_holds_no_lease_and_ctrl_c_during_it_interrupts_at_once(make_manager, backend):
    """Events reach subscribers where no lease, lock or held-back interrupt is held."""
    from jlm_helpers.fakes import fake

    manager = make_manager()
    fake(manager, "a")
    fake(manager, "b")
    in_subscriber, seen_meanwhile = threading.Event(), {}

    def slow(event):
        if event.kind == "loaded" and event.model_id == "a" and not in_subscriber.is_set():
            in_subscriber.set()
            time.sleep(30)  # a subscriber that blocks: the Ctrl-C below must not wait for it

    def meanwhile():
        try:
            assert in_subscriber.wait(30)
            seen_meanwhile["in_use"] = manager.row("a").in_use
            manager.load("b")  # other threads load and unload meanwhile
            seen_meanwhile["unloaded"] = manager.unload("a") is not None
        except Exception as error:  # noqa: BLE001 - shown by the assertion below, not lost in this thread
            seen_meanwhile["error"] = repr(error)
        finally:
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C, as the kernel delivers it

    manager.subscribe(slow)
    other = threading.Thread(target=meanwhile)
    other.start()
    started = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        manager.load("a")
    waited = time.monotonic() - started
    other.join(10)
    # in use once: the loading thread's promise of a lease, taken after its subscribers ran; no lease is held,
    # so another thread unloads the model meanwhile
    assert seen_meanwhile == {"in_use": 1, "unloaded": True} and waited < 20
    assert manager.row("a").in_use == 0 and manager.row("b").state == "loaded"


def test_an_embedding_request_of_huge_garbage_is_refused_with_a_short_message(make_manager, backend, monkeypatch):
    from jlm_helpers.fakes import fake

    from jupyter_llm_manager import InvalidGenerationParameters

    monkeypatch.setattr(type(backend), "modes", frozenset({"chat", "embed"}))
    manager = make_manager()
    fake(manager, "vectors", mode="embed")
    with pytest.raises(InvalidGenerationParameters) as caught:
        manager.embed("vectors", [[0] * 10_000_000])
    assert len(str(caught.value)) <= 500 and "non-empty string" in str(caught.value)
