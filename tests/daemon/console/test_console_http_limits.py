"""The console's uvicorn, as `cxrd console` configures it, against slow and silent clients: a request
head or a form body that does not arrive in time loses its connection, so silent sockets cannot use
up `limit_concurrency` and turn everyone else away (slowloris); no Server header is sent."""
from __future__ import annotations

import socket
import threading
import time

import pytest

from conftest import free_port
from daemon.console import http_limits


@pytest.fixture()
def served(console_client, monkeypatch):  # noqa: ANN201
    import dataclasses

    import uvicorn

    from daemon.console.app import build_app
    from daemon.console.server import uvicorn_config
    monkeypatch.setattr(http_limits, "REQUEST_HEAD_TIMEOUT_S", 1.0)
    monkeypatch.setattr(http_limits, "BODY_TIMEOUT_S", 1.0)
    rt = console_client(base_url="http://testserver").rt
    port = free_port()
    rt.settings = dataclasses.replace(rt.settings, console=dataclasses.replace(rt.settings.console,
                                                                               bind="127.0.0.1", port=port))
    server = uvicorn.Server(uvicorn_config(rt, build_app(rt), None))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "console did not start"
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(10)


def get(port: int, path: str = "/signin") -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def closed_within(s: socket.socket, seconds: float) -> bool:
    s.settimeout(seconds)
    try:
        while s.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


def test_console_silent_and_slow_connections_are_closed_and_others_still_served(served):
    port = served
    silent = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(70)]  # > limit_concurrency
    partial = socket.create_connection(("127.0.0.1", port), timeout=5)
    partial.sendall(b"GET /signin HTTP/1.1\r\nHost: local")  # a head never finished
    time.sleep(0.3)
    started = time.monotonic()
    assert closed_within(partial, 5) and time.monotonic() - started < 4
    assert all(closed_within(s, 3) for s in silent)
    for s in (*silent, partial):
        s.close()
    answer = get(port)
    assert answer.startswith(b"HTTP/1.1 200 ") and b"\r\nserver:" not in answer.lower()


def test_console_a_form_body_trickled_too_slowly_is_refused(served):
    with socket.create_connection(("127.0.0.1", served), timeout=10) as s:
        s.sendall(b"POST /signin HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                  b"Content-Length: 100\r\n\r\nname=a")
        s.settimeout(5)
        answer = s.recv(65536)
    assert answer.startswith(b"HTTP/1.1 408 ")
