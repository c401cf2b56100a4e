"""The ledger under damage and hostile input: lost or replaced files, passing errors, files that are not ledgers,
files others could reach, bad rows and names, a forked child.

Whatever happens to the file, no member counts fewer bytes than the others hold (it goes on counting what it
last read of them), nothing that is not a ledger is ever altered, and one bad row or name breaks no view.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
from jlm_helpers.children import run_child
from jlm_helpers.conditions import until
from jlm_helpers.fakes import GB, fake

from jupyter_llm_manager import ConfigurationError, LLMManager, ResourceNotAvailableError
from jupyter_llm_manager.manager.cooperation import ledger as ledger_module
from jupyter_llm_manager.manager.cooperation.ledger import Ledger, MemberRow, ModelRow

STARTED = psutil.Process().create_time()


def member(name: str, notebook: str = "", address: str = "") -> MemberRow:
    """A member row for this very process (alive), as another kernel would write it."""
    return MemberRow(name, os.getpid(), STARTED, "", notebook or f"{name}.ipynb", address, time.time())


def idle_model(owner: str, size: int, model_id: str = "theirs") -> ModelRow:
    return ModelRow(owner, model_id, model_id, "cuda:0", size, "loaded", False, 0, time.time(), 0, False)


def ps(ledger: Path, tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "JUPYTER_LLM_MANAGER_LEDGER": str(ledger), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "COLUMNS": "400"}
    return subprocess.run([sys.executable, "-c", "from jupyter_llm_manager.frontends.cli import main; main(['ps'])"],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def loads_alone_with_one_warning(make_manager, path: Path, warning: str, monkeypatch) -> None:
    """A manager whose default ledger is ``path`` loads a model on its own, and warns once with ``warning``."""
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_LEDGER", str(path))
    manager = make_manager(max_loaded_models=1)
    fake(manager, "a")
    manager.load("a")
    warnings = [e.message for e in manager.events() if e.kind == "warning"]
    assert len(warnings) == 1 and warning in warnings[0], warnings
    assert manager.row("a").state == "loaded"


# -- 1. a lost ledger never over-commits; a passing error deletes nothing ------------------------------------

@pytest.mark.slow
def test_a_deleted_ledger_never_lets_another_kernel_over_commit_the_budget(tmp_path, tiny_models):
    """A holds an idle model; the ledger's files are deleted; B loads a model that does not fit beside it."""
    from jlm_helpers.kernels import Kernel

    probe = LLMManager(config_path=False, preload=False, cooperate=False)
    try:
        sizes = {n: probe.register(n, source=str(p)) and probe.estimate(n).total_bytes for n, p in tiny_models.items()}
    finally:
        probe.close()
    budget = int(max(sizes.values()) * 1.5)  # one model at a time
    ledger = tmp_path / "ledger.sqlite"
    a, b = Kernel("holder.ipynb", tmp_path, ledger), Kernel("loader.ipynb", tmp_path, ledger)
    try:
        for kernel in (a, b):
            assert kernel.ask("start", settings={"memory_budget": {"cpu": budget}, "wait_timeout": 30},
                              models={n: {"source": str(p)} for n, p in tiny_models.items()})["ok"]
        assert b.ask("load", id="b")["ok"] and b.ask("unload", id="b")["ok"]  # a first load's own costs, paid
        assert a.ask("load", id="a")["ok"]
        assert until(lambda: [m[2] for m in b.ask("machine")["models"]] == ["a"]), "B never read A's model"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{ledger}{suffix}").unlink(missing_ok=True)
        loaded = b.ask("load", id="b", wait=10)
        states = a.ask("states")["states"]["a"], b.ask("states")["states"]["b"]
        assert states != ("loaded", "loaded"), f"both loaded: {sum(sizes.values())} bytes on a {budget}-byte budget"
        assert loaded["ok"] and states == ("registered", "loaded"), (loaded, states)  # A was asked, and made room
    finally:
        a.close()
        b.close()


def test_an_error_that_passes_never_deletes_the_ledger_and_the_others_still_count(make_manager, tmp_path,
                                                                                  monkeypatch):
    path = tmp_path / "ledger.sqlite"
    theirs = Ledger(path)
    theirs.publish(member("elsewhere"), [idle_model("elsewhere", int(2.5 * GB))])
    manager = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    fake(manager, "big", 2 * GB)
    try:
        assert [m.model_id for m in manager.machine().models] == ["theirs"]  # read once: remembered
        inode = path.stat().st_ino

        def disk_full(*args, **kwargs):
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(ledger_module, "_begin", disk_full)
        monkeypatch.setattr(ledger_module, "transaction", disk_full)
        with pytest.raises(ResourceNotAvailableError):
            manager.load("big", wait=0)  # the others' 2.5 GB still count: 2 GB more do not fit in 3 GB
        assert manager.row("big").state == "registered"
        warnings = [e.message for e in manager.events() if e.kind == "warning"]
        assert len(warnings) == 1 and "disk is full" in warnings[0], warnings
        monkeypatch.undo()
        assert path.stat().st_ino == inode and [m.member for m in theirs.members()] == ["elsewhere"]  # still there
    finally:
        theirs.close()


def place(ledger: Ledger) -> None:
    with ledger.placement("me", wait=5) as placing:
        placing.publish(member("me"), [])


@pytest.mark.parametrize("write", [lambda ledger: ledger.publish(member("me"), []), place], ids=["publish", "placement"])
def test_a_ledger_this_member_had_open_is_recreated_when_damaged_and_the_others_still_count(write, tmp_path):
    path = tmp_path / "ledger.sqlite"
    mine, theirs = Ledger(path), Ledger(path)
    try:
        theirs.publish(member("them"), [idle_model("them", 100)])
        mine.publish(member("me"), [])
        assert [r.bytes for r in mine.others("me")[1]] == [100]
        for suffix in ("", "-wal", "-shm"):  # the same files, written over
            Path(f"{path}{suffix}").write_bytes(b"overwritten, not a database" * 2000)
        write(mine)  # recreated: it was this member's ledger
        assert "recreated" in mine.take_recreated()
        assert [r.bytes for r in mine.others("me")[1]] == [100]  # counted until "them" writes again
        assert [m.member for m in Ledger(path).members()] == ["me"]
    finally:
        mine.close()
        theirs.close()


def test_a_member_carried_over_a_deleted_ledger_counts_until_it_writes_again_or_leaves(tmp_path):
    path, socket = tmp_path / "ledger.sqlite", tmp_path / "their-socket"
    socket.touch()  # where "them" listens: a member that leaves removes it
    mine, theirs = Ledger(path), Ledger(path)
    try:
        theirs.publish(member("them", address=str(socket)), [idle_model("them", 100)])
        assert [r.bytes for r in mine.others("me")[1]] == [100]
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        assert [r.bytes for r in mine.others("me")[1]] == [100]  # no file: still counted
        mine.publish(member("me"), [])  # a new file, without "them"
        assert [r.bytes for r in mine.others("me")[1]] == [100]
        socket.unlink()  # "them" left (its process still runs: a kernel that closed its manager)
        assert mine.others("me") == ([], [], [])
    finally:
        mine.close()
        theirs.close()


def test_a_request_queued_in_a_lost_ledger_never_removes_another_members_request_in_the_new_one(tmp_path):
    path = tmp_path / "ledger.sqlite"
    mine, theirs = Ledger(path), Ledger(path)
    try:
        mine.publish(member("me"), [])
        arrival = mine.enqueue("me", "mine", {"cpu": 10}, 0)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink()
        theirs.publish(member("them"), [])
        assert theirs.enqueue("them", "theirs", {"cpu": 20}, 0) == arrival  # numbered anew
        mine.requeue(arrival, {"cpu": 30})
        mine.dequeue(arrival)
        assert [(r.member, r.needed) for r in theirs.requests()] == [("them", {"cpu": 20})]
    finally:
        mine.close()
        theirs.close()


# -- 2. a file that is not a ledger is never altered -----------------------------------------------------------

def foreign_database(path: Path) -> None:
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE requests (id INTEGER PRIMARY KEY, body TEXT)")
        connection.execute("INSERT INTO requests (body) VALUES ('keep me')")
    connection.close()
    path.chmod(0o600)


def text_file(path: Path) -> None:
    path.write_text("my notes\n" * 100)
    path.chmod(0o600)


@pytest.mark.parametrize("make", [text_file, foreign_database], ids=["text file", "another program's database"])
def test_a_file_put_in_place_of_the_ledger_is_never_written_even_through_the_ledgers_old_wal(make, tmp_path):
    path = tmp_path / "ledger.sqlite"
    mine = Ledger(path)
    try:
        mine.publish(member("me"), [idle_model("me", 100)])
        assert Path(f"{path}-wal").stat().st_size > 0  # the ledger's pages are in its -wal
        make(tmp_path / "theirs.db")
        before = (tmp_path / "theirs.db").read_bytes()
        os.replace(tmp_path / "theirs.db", path)
        with pytest.raises(ConfigurationError, match="not a ledger"):
            mine.publish(member("me"), [])
        assert path.read_bytes() == before
    finally:
        mine.close()
    assert path.read_bytes() == before


@pytest.mark.parametrize("make", [text_file, foreign_database], ids=["text file", "another program's database"])
def test_an_explicit_ledger_path_that_is_not_a_ledger_is_a_configuration_error_and_left_alone(make, make_manager,
                                                                                             tmp_path):
    path = tmp_path / "mine.db"
    make(path)
    before = path.read_bytes()
    manager = make_manager(ledger_path=str(path))
    fake(manager, "a")
    with pytest.raises(ConfigurationError, match="not a ledger") as raised:
        manager.load("a")
    assert "\n" not in str(raised.value)
    assert path.read_bytes() == before and not Path(f"{path}-wal").exists()


@pytest.mark.parametrize("make", [text_file, foreign_database], ids=["text file", "another program's database"])
def test_the_default_ledger_path_naming_another_file_works_alone_and_ps_leaves_it(make, make_manager, tmp_path,
                                                                                  monkeypatch):
    path = tmp_path / "default.sqlite"
    make(path)
    before = path.read_bytes()
    loads_alone_with_one_warning(make_manager, path, "not a ledger", monkeypatch)
    done = ps(path, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert path.read_bytes() == before


def test_ps_creates_nothing_and_says_there_is_no_ledger(tmp_path):
    path = tmp_path / "nowhere" / "ledger.sqlite"
    done = ps(path, tmp_path)
    assert done.returncode == 0, done.stderr
    assert "no ledger" in done.stdout, done.stdout
    assert not path.parent.exists()


# -- 3. files others could reach are refused ---------------------------------------------------------------------

def readable_companion(path: Path) -> None:
    Path(f"{path}-wal").touch()
    Path(f"{path}-wal").chmod(0o666)


def readable_ledger(path: Path) -> None:
    made = Ledger(path)
    made.publish(member("earlier"), [])
    made.close()
    path.chmod(0o644)


def link_to_a_file_not_mine(path: Path) -> None:
    target = next(p for p in (Path("/etc/hostname"), Path("/etc/passwd")) if p.exists())
    path.symlink_to(target)


def shared_folder(path: Path) -> None:
    path.parent.chmod(0o777)


@pytest.mark.parametrize("plant", [readable_companion, readable_ledger, link_to_a_file_not_mine, shared_folder])
def test_ledger_files_others_could_reach_are_refused_and_the_kernel_works_alone(plant, make_manager, tmp_path,
                                                                                monkeypatch):
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o700)
    path = folder / "ledger.sqlite"
    plant(path)
    files = {p: (p.lstat().st_mode, p.lstat().st_size) for p in folder.iterdir()}
    loads_alone_with_one_warning(make_manager, path, "not safe", monkeypatch)
    assert {p: (p.lstat().st_mode, p.lstat().st_size) for p in folder.iterdir()} == files  # nothing written
    folder.chmod(0o700)


def test_the_default_ledger_lives_in_a_private_folder_with_private_files(make_manager, tmp_path, monkeypatch):
    monkeypatch.delenv("JUPYTER_LLM_MANAGER_LEDGER")
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    manager = make_manager()
    fake(manager, "a")
    manager.load("a")
    path = ledger_module.default_ledger_path()
    assert path.parent != tmp_path / "runtime" and path.parent.parent == tmp_path / "runtime"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    for file in [path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm"))]:
        assert file.exists()
        assert stat.S_IMODE(file.stat().st_mode) == 0o600, file
    assert manager.machine().ledger == str(path)


# -- 9. bad rows are ignored, once each --------------------------------------------------------------------------

def test_bad_rows_are_ignored_with_one_warning_each_and_break_no_load_nor_ps(make_manager, tmp_path, caplog):
    path = tmp_path / "ledger.sqlite"
    theirs = Ledger(path)
    theirs.publish(member("good"), [idle_model("good", GB // 2)])
    theirs.close()
    with sqlite3.connect(path) as connection:
        connection.execute("INSERT INTO members VALUES ('bad', 'a text pid', ?, '', 'bad.ipynb', '', ?)",
                           (STARTED, time.time()))
        connection.execute("INSERT INTO models VALUES ('good', 'k2', 'odd', 'cuda:0', 'many', 'loaded', 0, 0, 0, 0, 0)")
        connection.execute("INSERT INTO models VALUES ('good', 'k3', 'minus', 'cuda:0', -5, 'loaded', 0, 0, 0, 0, 0)")
        connection.execute("INSERT INTO models VALUES ('good', 'k4', 'what', 'cuda:0', ?, 'sleeping', 0, 0, 0, 0, 0)",
                           (2 * GB,))  # counted, a 3 GB budget would have no room for 'a'
    connection.close()
    manager = make_manager(ledger_path=str(path), memory_budget={"cuda:0": 3 * GB})
    fake(manager, "a", GB)
    with caplog.at_level(logging.WARNING, logger=ledger_module.__name__):
        manager.load("a", wait=0)
        manager.unload("a")
        manager.load("a", wait=0)
        report = manager.machine()
    assert [m.model_id for m in report.models if not m.this] == ["theirs"]
    warned = [r.getMessage() for r in caplog.records if "cannot read" in r.getMessage()]
    assert len(warned) == 4, warned  # one per bad row
    assert any("'sleeping' is none of" in said for said in warned), warned
    done = ps(path, tmp_path)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert "good.ipynb" in done.stdout


# -- 12. names shown safely; a folder warns once; a forked child leaves its parent alone ---------------------------

def test_names_in_rows_never_hide_or_split_rows_of_ps(tmp_path):
    path = tmp_path / "ledger.sqlite"
    writer = Ledger(path)
    names = {"cut": "open\x1b]8;;http://evil", "split": "two\nlines.ipynb", "long": "x" * 5000 + ".ipynb",
             "plain": "plain.ipynb", "bell": "ring\x07\x1b[31mred.ipynb", "rtl": "\u202egpj.exe.ipynb"}
    try:
        for name, notebook in names.items():
            writer.publish(member(name, notebook), [idle_model(name, 100, model_id=f"model-{name}")])
        done = ps(path, tmp_path)
    finally:
        writer.close()
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    for name in names:
        assert sum(f"model-{name}" in line for line in lines) == 1, done.stdout  # every model row shows, once
    assert any("two lines.ipynb" in line for line in lines), done.stdout
    assert "\x1b" not in done.stdout and "\x07" not in done.stdout and "\u202e" not in done.stdout
    assert max(len(line) for line in lines) < 1200


def become_a_folder(path: Path, monkeypatch) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    path.mkdir()


def become_a_text_file(path: Path, monkeypatch) -> None:
    text_file(path.with_name("notes.txt"))
    os.replace(path.with_name("notes.txt"), path)  # the user's own file, now at the ledger's path


def become_full(path: Path, monkeypatch) -> None:
    """The disk is full: the ledger can be read, not written."""
    def disk_full(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(ledger_module, "transaction", disk_full)


@pytest.mark.parametrize("become", [become_a_folder, become_a_text_file, become_full])
def test_a_ledger_path_that_became_something_else_warns_once_and_is_left_alone(become, make_manager, tmp_path,
                                                                               monkeypatch, caplog):
    from jupyter_llm_manager.manager.cooperation import publishing

    monkeypatch.setattr(publishing, "HEARTBEAT_S", 0.02)
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_LEDGER", str(path))  # not set by hand: a warning, never an error
    manager = make_manager()
    fake(manager, "a")
    manager.load("a")
    writes = []
    ledger = manager._parts.cooperation.membership.ledger
    publish = ledger.publish_current
    monkeypatch.setattr(ledger, "publish_current", lambda read: writes.append(1) or publish(read))
    with caplog.at_level(logging.WARNING):
        with ledger._lock:  # between two writes of the publisher: it never sees half the change
            become(path, monkeypatch)
        before = path.read_bytes() if path.is_file() else b""
        assert until(lambda: manager.machine() and len(writes) >= 20), "the publisher stopped"  # reads too
        assert before == (path.read_bytes() if path.is_file() else b"")
    warnings = [e.message for e in manager.events() if e.kind == "warning"]
    assert len(warnings) == 1 and "cooperation with other kernels is off" in warnings[0], "\n".join(warnings)
    assert len([r for r in caplog.records if warnings[0] in r.getMessage()]) == 1  # the log says it once too


def test_a_forked_child_that_exits_leaves_its_parents_socket_and_rows(tmp_path):
    found = run_child(f"""
        import json, os, sys
        from jupyter_llm_manager import LLMManager
        from jupyter_llm_manager.manager.cooperation.ledger import Ledger

        def load_thing(spec):
            return {{'weights': bytearray(1000)}}

        manager = LLMManager(config_path=False, preload=False, ledger_path={str(tmp_path / 'ledger.sqlite')!r})
        manager.register('thing', loader='__main__:load_thing', required_memory='1MB')
        manager.load('thing')
        membership = manager._parts.cooperation.membership
        address = membership._listener.address
        pid = os.fork()
        if pid == 0:
            sys.exit(0)  # a normal exit: atexit handlers and finalizers run in the child
        os.waitpid(pid, 0)
        members = [m.member for m in Ledger(membership.ledger.path).members()]
        print(json.dumps({{"socket": os.path.exists(address), "member": membership.member in members}}))
        manager.close()
    """)
    assert found == {"socket": True, "member": True}


# -- 1b. damage between two readings: the kernel that had not read the others never over-commits --------------

def delete_all(path: Path, tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def delete_main_only(path: Path, tmp_path: Path) -> None:
    path.unlink()  # its -wal and -shm stay


def overwrite_in_place(path: Path, tmp_path: Path) -> None:
    with open(path, "r+b") as file:  # the same file (inode), its bytes garbage
        file.write(b"garbage" * 1000)
        file.truncate()


def replace_with_text(path: Path, tmp_path: Path) -> None:
    text_file(tmp_path / "notes.txt")
    os.replace(tmp_path / "notes.txt", path)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


def link_to_an_empty_file(path: Path, tmp_path: Path) -> None:
    (tmp_path / "new.sqlite").touch(mode=0o600)
    delete_all(path, tmp_path)
    path.symlink_to(tmp_path / "new.sqlite")


def replace_with_an_empty_database(path: Path, tmp_path: Path) -> None:
    with sqlite3.connect(tmp_path / "foreign.sqlite") as connection:
        connection.execute("CREATE TABLE t (x)")
    connection.close()
    (tmp_path / "foreign.sqlite").chmod(0o600)
    for suffix in ("-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)
    os.replace(tmp_path / "foreign.sqlite", path)


DAMAGE = [delete_all, delete_main_only, overwrite_in_place, replace_with_text, link_to_an_empty_file,
          replace_with_an_empty_database]


def holder_and_loader(make_manager, tmp_path, monkeypatch, **options):
    """Two kernels on one default ledger (damage warns, never raises): the holder's idle 2 GB and the loader's
    2 GB do not fit in 3 GB together; the loader last read the ledger before the holder loaded."""
    path = tmp_path / "ledger.sqlite"
    monkeypatch.setenv("JUPYTER_LLM_MANAGER_LEDGER", str(path))
    holder = make_manager(memory_budget={"cuda:0": 3 * GB}, **options)
    loader = make_manager(memory_budget={"cuda:0": 3 * GB}, **options)
    fake(holder, "theirs", 2 * GB)
    fake(loader, "mine", 2 * GB)
    # the loader reads only when it places or is asked to (its publisher wakes waiting kernels after each write)
    monkeypatch.setattr(loader._parts.cooperation.membership, "_wake_waiting", lambda ledger: None)
    loader.load("mine")
    loader.unload("mine")
    reader = Ledger(path)
    try:
        assert until(lambda: not reader.models()), "the loader never wrote that it unloaded"
        holder.load("theirs")
        assert until(lambda: [(m.model_id, m.state) for m in reader.models()] == [("theirs", "loaded")])
    finally:
        reader.close()
    return path, holder, loader


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_ledger_never_lets_a_kernel_that_had_not_read_it_since_over_commit(damage, make_manager,
                                                                                     tmp_path, monkeypatch):
    path, holder, loader = holder_and_loader(make_manager, tmp_path, monkeypatch)
    damage(path, tmp_path)
    try:
        loader.load("mine", wait=0)
    except ResourceNotAvailableError as error:
        assert "\n" not in str(error)
    states = holder.row("theirs").state, loader.row("mine").state
    assert states != ("loaded", "loaded"), "both loaded: 4 GB on a 3 GB budget"


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_ledger_after_a_reading_keeps_the_wait_and_counts_no_room_the_holder_freed(damage, make_manager,
                                                                                          tmp_path, monkeypatch):
    path, holder, loader = holder_and_loader(make_manager, tmp_path, monkeypatch, clock=time.monotonic)
    assert [m.model_id for m in loader.machine().models if not m.this] == ["theirs"]  # read: remembered
    damage(path, tmp_path)
    refused: list[ResourceNotAvailableError] = []

    def load() -> None:
        try:
            loader.load("mine", wait=3)
        except ResourceNotAvailableError as error:
            refused.append(error)

    loading = threading.Thread(target=load, daemon=True)
    started = time.monotonic()
    loading.start()
    loading.join(20)
    assert not loading.is_alive(), "wait=3 was not kept"
    assert time.monotonic() - started < 4.5
    assert not refused or ("did not answer" not in str(refused[0]) and "\n" not in str(refused[0])), refused
    assert (holder.row("theirs").state, loader.row("mine").state) == ("registered", "loaded"), refused
