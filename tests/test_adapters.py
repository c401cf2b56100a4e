"""LoRA adapters as managed variants of one resident base: exact answers, one base, slices, caps, errors."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from jlm_helpers.adapters import make_lora

from jupyter_llm_manager import ConfigurationError, LLMManager

PROMPTS = ["hello world", "def add(a, b):", "the quick brown fox"]
GREEDY = {"do_sample": False, "repetition_penalty": 1.0, "max_new_tokens": 12}


@pytest.fixture(scope="session")
def adapters(tiny_models, tmp_path_factory) -> dict[str, Path]:
    """Two adapters of tiny model a, and one of tiny model b (another hidden size)."""
    root = tmp_path_factory.mktemp("adapters")
    return {"one": make_lora(tiny_models["a"], root / "one", 1), "two": make_lora(tiny_models["a"], root / "two", 2),
            "other": make_lora(tiny_models["b"], root / "other", 3)}


@pytest.fixture(scope="session")
def peft_answers(tiny_models, adapters) -> dict[tuple[str, str], str]:
    """PEFT's own greedy answers: PeftModel.from_pretrained(base, path), decoded, on raw prompts."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_models["a"])
    answers = {}
    for name in ("one", "two", None):
        model = AutoModelForCausalLM.from_pretrained(tiny_models["a"])
        if name is not None:
            model = PeftModel.from_pretrained(model, adapters[name])
        for prompt in PROMPTS:
            inputs = tokenizer(prompt, return_tensors="pt")
            output = model.generate(**inputs, max_new_tokens=12, do_sample=False, repetition_penalty=1.0,
                                    pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
            answers[(name or "base", prompt)] = tokenizer.decode(output[0, inputs["input_ids"].shape[-1]:],
                                                                 skip_special_tokens=True)
    return answers


@pytest.fixture
def lora_manager(tiny_models, adapters):
    manager = LLMManager(config_path=False, preload=False)
    manager.register("base", source=str(tiny_models["a"]))
    manager.register("one", base="base", adapter=str(adapters["one"]))
    manager.register("two", base="base", adapter=str(adapters["two"]))
    yield manager
    manager.close()


def test_answers_equal_peft_own_answers_exactly_and_the_base_alone_answers_without_adapters(lora_manager,
                                                                                          peft_answers):
    for prompt in PROMPTS:
        for model_id in ("one", "two", "base", "one"):
            text = lora_manager.generate(model_id, prompt, raw=True, **GREEDY).text
            assert text == peft_answers[(model_id, prompt)], (model_id, prompt)
    assert peft_answers[("one", PROMPTS[0])] != peft_answers[("base", PROMPTS[0])]


@pytest.fixture
def peft_switches(monkeypatch) -> list[str]:
    """Every walk PEFT makes over the model's modules to switch adapters, by kind, in order."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTuner

    walks: list[str] = []
    for owner, name in ((PeftModel, "set_adapter"), (BaseTuner, "enable_adapter_layers"),
                        (BaseTuner, "disable_adapter_layers")):
        original = getattr(owner, name)

        def counted(self, *args, _original=original, _name=name, **kwargs):
            walks.append(_name)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(owner, name, counted)
    return walks


def test_the_model_switches_only_when_the_id_it_answers_as_changes(lora_manager, peft_switches, peft_answers):
    prompt = PROMPTS[0]
    lora_manager.load("one")
    lora_manager.load("two")
    peft_switches.clear()
    sequence = [("one", "generate"), ("one", "generate"), ("one", "use"), ("one", "stream"), ("two", "use"),
                ("two", "generate"), ("base", "generate"), ("base", "use"), ("base", "stream"), ("one", "generate")]
    switches_per_step = []
    for model_id, how in sequence:
        before = len(peft_switches)
        if how == "use":
            with lora_manager.use(model_id):
                pass
        else:
            answer = (lora_manager.generate(model_id, prompt, raw=True, **GREEDY).text if how == "generate"
                      else "".join(lora_manager.stream(model_id, prompt, raw=True, **GREEDY)))
            assert answer == peft_answers[(model_id, prompt)], (model_id, how)
        switches_per_step.append(len(peft_switches) > before)
    # the first request on "one" switches (loading "two" made it active), then only changes of id switch
    assert switches_per_step == [True, False, False, False, True, False, True, False, False, True]


def test_an_adapter_put_on_or_taken_off_makes_the_next_request_switch(lora_manager, peft_switches, peft_answers):
    prompt = PROMPTS[2]
    assert lora_manager.generate("base", prompt, raw=True, **GREEDY).text == peft_answers[("base", prompt)]
    lora_manager.load("one")  # its layers start active: the base must switch them off again
    assert lora_manager.generate("base", prompt, raw=True, **GREEDY).text == peft_answers[("base", prompt)]
    assert lora_manager.generate("one", prompt, raw=True, **GREEDY).text == peft_answers[("one", prompt)]
    lora_manager.unload("one")  # the active adapter goes: the next "one" is a new copy of it
    for model_id in ("one", "base", "one"):
        assert lora_manager.generate(model_id, prompt, raw=True, **GREEDY).text == peft_answers[(model_id, prompt)]


def test_switching_adapters_never_reloads_the_base(lora_manager):
    loads = []
    lora_manager.subscribe(lambda event: loads.append(event.model_id) if event.kind == "loading" else None)
    with lora_manager.use("base") as lease:
        model = lease.model
    for model_id in ("one", "two", "one", "base", "two"):
        lora_manager.generate(model_id, "hi", raw=True, max_new_tokens=2)
        with lora_manager.use(model_id) as lease:
            assert lease.model is model
    assert loads == ["base", "one", "two"]
    rows = {row.id: row for row in lora_manager.status()}
    assert rows["one"].base == "base" and rows["one"].shares_base and rows["base"].base is None
    assert rows["one"].instance != rows["base"].instance != rows["two"].instance


def test_loading_an_adapter_loads_its_base_and_unloading_it_keeps_the_base(lora_manager):
    lora_manager.load("one")
    rows = {row.id: row for row in lora_manager.status()}
    assert rows["base"].state == "loaded" and rows["one"].state == "loaded" and rows["two"].state == "registered"
    assert 0 < rows["one"].actual_bytes < rows["base"].actual_bytes
    lora_manager.unload("one")
    rows = {row.id: row for row in lora_manager.status()}
    assert rows["base"].state == "loaded" and rows["one"].state == "registered"
    assert lora_manager.generate("one", "hi", raw=True, max_new_tokens=2).text is not None


def test_unloading_or_evicting_the_base_takes_its_adapters_with_it(lora_manager, tiny_models):
    lora_manager.load("one")
    lora_manager.load("two")
    lora_manager.unload("base")
    assert {row.id: row.state for row in lora_manager.status()} == {
        "base": "registered", "one": "registered", "two": "registered"}
    lora_manager.register("b", source=str(tiny_models["b"]))
    lora_manager.configure(max_loaded_models=1)
    lora_manager.load("one")
    lora_manager.load("two")
    lora_manager.load("b")  # the count cap: the base goes, and its adapters with it (they hold no slot)
    assert {row.id: row.state for row in lora_manager.status()} == {
        "base": "registered", "one": "registered", "two": "registered", "b": "loaded"}


def test_adapters_do_not_count_against_max_loaded_models(lora_manager):
    lora_manager.configure(max_loaded_models=1)
    for model_id in ("one", "two"):
        lora_manager.load(model_id)
    assert {row.id: row.state for row in lora_manager.status()} == {"base": "loaded", "one": "loaded", "two": "loaded"}


def test_max_loaded_adapters_evicts_the_least_recently_used_adapter_of_that_base(lora_manager, adapters, tmp_path):
    import shutil

    third = shutil.copytree(adapters["one"], tmp_path / "three")  # another folder: another adapter
    lora_manager.register("three", base="base", adapter=str(third), keep_alive=600)
    lora_manager.configure(max_loaded_adapters=2)
    evicted = []
    lora_manager.subscribe(lambda event: evicted.append((event.model_id, event.reason))
                           if event.kind == "evicted" else None)
    lora_manager.load("one")
    lora_manager.load("two")
    lora_manager.generate("one", "hi", raw=True, max_new_tokens=1)  # "two" is now the least recently used
    lora_manager.load("three")
    states = {row.id: row.state for row in lora_manager.status()}
    assert states == {"base": "loaded", "one": "loaded", "two": "registered", "three": "loaded"}
    assert evicted == [("two", "lru")]
    lora_manager.configure(max_loaded_adapters=1)  # lowering it evicts at once
    assert sum(row.state == "loaded" for row in lora_manager.status() if row.base) == 1


def test_each_adapter_is_its_own_slice_of_the_budget_with_its_own_keep_alive(tiny_models, adapters):
    from jlm_helpers.fakes import FakeClock

    clock = FakeClock()
    manager = LLMManager(config_path=False, preload=False, clock=clock)
    try:
        manager.register("base", source=str(tiny_models["a"]))
        manager.register("one", base="base", adapter=str(adapters["one"]), keep_alive=10)
        manager.register("two", base="base", adapter=str(adapters["two"]), keep_alive=100)
        manager.load("one")
        manager.load("two")
        cpu = next(d for d in manager.devices() if d.device == "cpu")
        rows = {row.id: row for row in manager.status()}
        assert cpu.held_bytes >= sum(rows[i].actual_bytes for i in ("base", "one", "two"))
        assert set(cpu.models) == {"base", "one", "two"}
        clock.advance(11)
        manager.expire_idle()
        states = {row.id: row.state for row in manager.status()}
        assert states == {"base": "loaded", "one": "registered", "two": "loaded"}
    finally:
        manager.close()


def test_two_threads_streaming_two_adapters_each_get_their_own_answer(lora_manager, peft_answers):
    prompt = PROMPTS[1]
    answers: dict[str, list[str]] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(2)

    def run(model_id: str) -> None:
        try:
            start.wait(10)
            for _ in range(3):
                answers.setdefault(model_id, []).append(
                    "".join(lora_manager.stream(model_id, prompt, raw=True, wait=60, **GREEDY)))
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    threads = [threading.Thread(target=run, args=(model_id,)) for model_id in ("one", "two")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert errors == []
    assert answers == {m: [peft_answers[(m, prompt)]] * 3 for m in ("one", "two")}


def test_the_estimate_counts_the_adapter_weights_from_its_header(lora_manager, adapters):
    from jupyter_llm_manager.estimates import read_safetensors_header

    header = read_safetensors_header(adapters["one"] / "adapter_model.safetensors")
    expected = sum(4 * __import__("math").prod(info["shape"]) for info in header.values())
    base, one = lora_manager.estimate("base"), lora_manager.estimate("one")
    assert one.adapter_bytes == expected
    assert one.total_bytes == base.total_bytes + expected and "adapter" in one.weights_method
    lora_manager.load("one")
    assert lora_manager.row("one").actual_bytes == expected


@pytest.mark.parametrize("case", ["other size", "missing folder", "remote base", "adapter on adapter",
                                  "unknown base", "not an adapter"])
def test_every_wrong_adapter_is_one_clear_error_at_register_with_nothing_loaded(lora_manager, adapters,
                                                                               tiny_models, tmp_path, case):
    lora_manager.register("far", backend="openai", base_url="http://127.0.0.1:9/v1", model="x")
    options = {
        "other size": {"base": "base", "adapter": str(adapters["other"])},
        "missing folder": {"base": "base", "adapter": str(tmp_path / "nowhere")},
        "remote base": {"base": "far", "adapter": str(adapters["one"])},
        "adapter on adapter": {"base": "one", "adapter": str(adapters["two"])},
        "unknown base": {"base": "nobody", "adapter": str(adapters["one"])},
        "not an adapter": {"base": "base", "adapter": str(tiny_models["a"])},
    }[case]
    with pytest.raises(ConfigurationError) as raised:
        lora_manager.register("bad", **options)
    assert "\n" not in str(raised.value).strip()
    assert "bad" not in lora_manager.ids()
    assert all(row.state == "registered" for row in lora_manager.status())


def test_an_adapter_of_another_architecture_is_refused(lora_manager, adapters, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_embd=64, n_layer=1, n_head=2, vocab_size=320, n_positions=64))
    get_peft_model(gpt2, LoraConfig(r=2, target_modules=["c_attn"], init_lora_weights=False)).save_pretrained(
        tmp_path / "gpt2")
    with pytest.raises(ConfigurationError, match="another architecture"):
        lora_manager.register("bad", base="base", adapter=str(tmp_path / "gpt2"))


def test_the_magic_registers_an_adapter_and_base_url_is_written_in_full(shell_with, tiny_models, adapters):
    manager = LLMManager(config_path=False, preload=False)
    try:
        shell = shell_with(manager)
        shell.run_line_magic("llm", f"register base {tiny_models['a']}")
        shell.run_line_magic("llm", f"register tuned --base base --adapter {adapters['one']}")
        assert manager.spec("tuned").base == "base" and manager.row("tuned").base == "base"
        shell.run_line_magic("llm", "register far --base-url http://127.0.0.1:9/v1")
        assert manager.spec("far").base_url == "http://127.0.0.1:9/v1"
        from jupyter_llm_manager.frontends.notebook.arguments import LINE_PARSER, parse

        with pytest.raises(Exception):  # noqa: B017 - argparse's usage error: --base-u is no abbreviation now
            parse(LINE_PARSER, "register x --base-u http://h/v1")
    finally:
        manager.close()


def test_the_yaml_file_registers_adapters_on_their_base_and_saves_them_as_written(tmp_path, tiny_models, adapters):
    path = tmp_path / "llm.yaml"
    path.write_text(f"defaults: {{max_loaded_adapters: 3}}\nmodels:\n"
                    f"  tuned: {{base: base, adapter: {adapters['one']}, keep_alive: 5m}}\n"
                    f"  base: {{source: {tiny_models['a']}}}\n")
    manager = LLMManager(config_path=path, preload=False)
    try:
        assert manager.max_loaded_adapters == 3
        spec = manager.spec("tuned")
        assert spec.base == "base" and spec.source == str(tiny_models["a"]) and spec.keep_alive == 300
        manager.save()
        saved = path.read_text()
        assert "tuned" in saved and "adapter" in saved
    finally:
        manager.close()
    again = LLMManager(config_path=path, preload=False)
    try:
        assert again.spec("tuned") == spec
    finally:
        again.close()


def test_the_base_cannot_be_unregistered_under_its_adapters(lora_manager):
    with pytest.raises(ConfigurationError, match="unregister those adapters first"):
        lora_manager.unregister("base")
    lora_manager.unregister("one")
    lora_manager.unregister("two")
    lora_manager.unregister("base")
    assert lora_manager.ids() == []
