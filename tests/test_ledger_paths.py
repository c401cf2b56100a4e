"""A ledger path that names what is not a ledger (issue "trust across the machine", item 2): whatever is there —
a text file of any mode, a folder, a pipe, a device, a link to one of them, an empty database of another
program's, one whose tables only look like a ledger's — is left as it is; set by hand, it is one line of
``ConfigurationError``."""

from __future__ import annotations

import os
import sqlite3
import threading
from pathlib import Path

import pytest
from jlm_helpers.fakes import fake

from jupyter_llm_manager import ConfigurationError


def text_644(path: Path) -> None:
    path.write_text("my notes\n")
    path.chmod(0o644)


def folder(path: Path) -> None:
    path.mkdir()


def fifo(path: Path) -> None:
    os.mkfifo(path, 0o600)


def link_to_dev_null(path: Path) -> None:
    path.symlink_to("/dev/null")


def link_to_fifo(path: Path) -> None:
    os.mkfifo(path.with_name("pipe"), 0o600)
    path.symlink_to(path.with_name("pipe"))


def tables_alike(path: Path) -> None:
    """Another program's database with tables named like a ledger's, and columns of its own."""
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE members (name TEXT)")
        connection.execute("CREATE TABLE models (name TEXT, size INTEGER)")
        connection.execute("INSERT INTO models VALUES ('keep me', 1)")
    connection.close()
    path.chmod(0o600)


def no_tables(path: Path) -> None:
    """Another program's database that has no table yet, only its version."""
    with sqlite3.connect(path) as connection:
        connection.execute("PRAGMA user_version = 7")
    connection.close()
    path.chmod(0o600)


def snapshot(path: Path) -> tuple:
    """What is at ``path`` as found (never opened: a pipe would block)."""
    found = os.lstat(path)
    content = path.read_bytes() if path.is_file() and not path.is_symlink() else b""
    return found.st_mode, found.st_ino, found.st_size, content


@pytest.mark.parametrize("make", [text_644, folder, fifo, link_to_dev_null, link_to_fifo, tables_alike, no_tables])
def test_an_explicit_ledger_path_naming_what_is_no_ledger_is_one_line_and_left_as_it_is(make, make_manager,
                                                                                      tmp_path):
    path = tmp_path / "ledger.sqlite"
    make(path)
    before = snapshot(path)
    manager = make_manager(ledger_path=str(path))
    fake(manager, "a")
    done: list[BaseException] = []

    def load() -> None:
        try:
            manager.load("a")
        except BaseException as error:  # noqa: BLE001 - what it raised is checked below
            done.append(error)

    loading = threading.Thread(target=load, daemon=True)
    loading.start()
    loading.join(30)
    assert not loading.is_alive(), "the load blocked on what is at the ledger's path"
    assert done and isinstance(done[0], ConfigurationError) and "not a ledger" in str(done[0]), done
    assert "\n" not in str(done[0])
    assert snapshot(path) == before and not Path(f"{path}-wal").exists()
