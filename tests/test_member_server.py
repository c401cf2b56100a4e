"""The server on each member's socket survives any message and any client, and starts again if it stops.

Other kernels ask a member to make room through it; a message that kills it,
or a client that holds it, would make every other kernel's request for that
member's room fail.
"""

from __future__ import annotations

import os
import socket
import stat
import threading
import time

import pytest
from jlm_helpers.conditions import until

from jupyter_llm_manager.manager.cooperation.bounds import MAX_MESSAGE
from jupyter_llm_manager.manager.cooperation.listener import Listener, ask


@pytest.fixture
def listener():
    answered: list[dict] = []

    def handle(request: dict) -> dict:
        answered.append(request)
        if request["op"] == "boom":
            raise RuntimeError("a bug in the answer")
        return {"member": "me", "seen": request.get("keys")}

    server = Listener(handle)
    server.answered = answered  # type: ignore[attr-defined]
    assert until(lambda: ask(server.address, {"op": "ping"}, 2.0), timeout=30), "the server never answered"
    yield server
    server.stop()


def raw(address: str, data: bytes, timeout: float = 5.0) -> bytes:
    """Send ``data`` as is; what came back before the server closed (or the timeout)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(address)
        connection.sendall(data)
        received = b""
        try:
            while chunk := connection.recv(65536):
                received += chunk
        except (TimeoutError, ConnectionResetError):
            pass
    return received


def post(body: bytes) -> bytes:
    return (b"POST /machine/evict HTTP/1.1\r\nHost: member\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body)


def test_a_request_is_answered_off_the_callers_thread_and_a_failing_answer_is_an_error_answer(listener):
    assert ask(listener.address, {"op": "evict", "keys": ["k"]}) == {"ok": True, "member": "me", "seen": ["k"]}
    said = ask(listener.address, {"op": "boom"})
    assert said is not None and not said["ok"] and "a bug in the answer" in said["error"]
    assert ask(listener.address, {"op": "ping"})["ok"]


@pytest.mark.parametrize("body, status", [
    (b"[" * 60_000, b"400"),  # nested deeper than any request: once a RecursionError that killed the listener
    (b'{"keys": ' + b"[" * 40 + b"]" * 40 + b"}", b"400"),
    (b"not json at all", b"400"),
    (b"[1, 2, 3]", b"400"),
    (b'{"keys": "' + b"x" * (MAX_MESSAGE + 10) + b'"}', b"413"),
    (b"\xff\xfe\x00garbage", b"400"),
])
def test_a_hostile_body_gets_an_error_and_the_server_goes_on(listener, body, status):
    answer = raw(listener.address, post(body))
    assert answer.split(b" ")[1] == status, answer[:200]
    assert ask(listener.address, {"op": "ping"})["ok"]
    assert [r["op"] for r in listener.answered] == ["ping", "ping"]  # the hostile one never reached the member


def test_garbage_that_is_not_http_is_closed_and_the_server_goes_on(listener):
    raw(listener.address, b"\x00" * 5000 + b"\r\n\r\n" * 3)
    raw(listener.address, b"GET / HTTP/1.1\r\n" + b"X-Long: " + b"a" * 100_000 + b"\r\n\r\n")
    assert ask(listener.address, {"op": "ping"})["ok"]


def test_a_slow_client_holds_nobody_up_and_is_cut_off(listener):
    """A client sending one byte every 1.5 s: others are answered meanwhile; it gets a 408 after the deadline."""
    result: list[bytes] = []

    def slow() -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
            connection.settimeout(20)
            connection.connect(listener.address)
            connection.sendall(post(b'{"keys": ["a"]}')[:-14])
            received = b""
            try:
                for byte in b'{"keys": ["a"]}':
                    time.sleep(1.5)  # the slow client itself: one byte every 1.5 s
                    connection.sendall(bytes([byte]))
            except OSError:
                pass  # cut off meanwhile
            try:
                while chunk := connection.recv(65536):
                    received += chunk
            except OSError:
                pass
            result.append(received)

    client = threading.Thread(target=slow)
    client.start()
    started = time.monotonic()
    for _ in range(3):
        assert ask(listener.address, {"op": "ping"}, 2.0)["ok"]
    assert time.monotonic() - started < 5
    client.join(40)
    assert result and result[0].split(b" ")[1] == b"408", result


def test_many_idle_connections_do_not_stop_it_answering(listener):
    idle = []
    try:
        for _ in range(50):
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(listener.address)
            idle.append(connection)
        started = time.monotonic()
        assert ask(listener.address, {"op": "ping"}, 5.0)["ok"]
        assert time.monotonic() - started < 5
    finally:
        for connection in idle:
            connection.close()


def test_more_idle_or_trickling_connections_than_it_serves_at_once_are_cut_off_and_it_answers_again(listener):
    """300 connections that send nothing, or half a request line: each is closed within HEADER_S of arriving,
    and the server answers again (with uvicorn alone they held every connection it serves until they left)."""
    from jupyter_llm_manager.manager.cooperation.bounds import HEADER_S, MAX_CONNECTIONS

    held = []
    try:
        for index in range(MAX_CONNECTIONS + 44):
            connection = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            connection.connect(listener.address)
            if index % 2:
                connection.sendall(b"POST /machine/ping HT")  # a request line that never ends
            held.append(connection)
        started = time.monotonic()
        assert until(lambda: (ask(listener.address, {"op": "ping"}, 1.0) or {}).get("ok"), timeout=HEADER_S + 10)
        assert time.monotonic() - started < HEADER_S + 8

        def closed(connection: socket.socket) -> bool:
            connection.settimeout(0.05)
            try:
                return connection.recv(1) == b""
            except TimeoutError:
                return False
            except OSError:
                return True

        assert until(lambda: all(closed(c) for c in held), timeout=HEADER_S + 10), "a connection was left open"
    finally:
        for connection in held:
            connection.close()


def test_headers_sent_one_byte_every_second_are_cut_off(listener):
    from jupyter_llm_manager.manager.cooperation.bounds import HEADER_S

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(5)
        connection.connect(listener.address)
        started = time.monotonic()
        cut = False
        for byte in post(b"{}"):
            try:
                connection.sendall(bytes([byte]))
                time.sleep(1.0)
                if connection.recv(1, socket.MSG_DONTWAIT | socket.MSG_PEEK) == b"":
                    cut = True
                    break
            except BlockingIOError:
                continue
            except OSError:
                cut = True
                break
            if time.monotonic() - started > HEADER_S + 6:
                break
        assert cut and time.monotonic() - started < HEADER_S + 6
    assert ask(listener.address, {"op": "ping"}, 2.0)["ok"]


def test_a_server_that_stops_by_itself_starts_again(listener):
    listener._server.should_exit = True  # as if it had died
    assert until(lambda: ask(listener.address, {"op": "ping"}, 1.0), timeout=30), "it never came back"


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can connect as another user here")
def test_a_process_of_another_user_gets_no_answer(listener):
    folder = os.path.dirname(listener.address)
    os.chmod(folder, 0o755)  # past the private folder, as if it were not there: the peer check alone
    os.chmod(listener.address, 0o777)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(read)
            os.setgid(65534)
            os.setuid(65534)
            answer = ask(listener.address, {"op": "evict", "keys": ["theirs"]}, 3.0)
            os.write(write, b"none" if answer is None else b"answered")
            code = 0
        finally:
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    said = os.read(read, 100)
    os.close(read)
    assert os.waitstatus_to_exitcode(status) == 0 and said == b"none"
    assert all(r.get("keys") != ["theirs"] for r in listener.answered)
    assert stat.S_IMODE(os.stat(listener.address).st_mode) == 0o777  # (what the test itself did)
