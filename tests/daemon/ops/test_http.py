"""The health/metrics endpoint survives clients that connect and say nothing."""
from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from daemon.ops.http import HttpEndpoint


@pytest.fixture()
def endpoint():
    e = HttpEndpoint("127.0.0.1", 0, health=lambda: (True, "alive"), ready=lambda: (True, "ready"),
                     metrics=lambda: b"cxrd_up 1\n", request_timeout_s=1.0, max_connections=4)
    e.start()
    yield e
    e.stop()


def _url(e: HttpEndpoint, path: str) -> str:
    return f"http://127.0.0.1:{e.server.server_address[1]}{path}"


def _closed_by_server(sock: socket.socket, within_s: float) -> bool:
    sock.settimeout(within_s)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False


def test_a_silent_client_is_dropped_after_the_request_timeout(endpoint):
    with socket.create_connection(endpoint.server.server_address) as idle:
        assert _closed_by_server(idle, within_s=5)
    assert urllib.request.urlopen(_url(endpoint, "/healthz"), timeout=5).read() == b"alive\n"


def test_connections_beyond_the_cap_are_closed_at_once_and_service_resumes(endpoint):
    idle = [socket.create_connection(endpoint.server.server_address) for _ in range(4)]
    try:
        time.sleep(0.2)  # each of the four now holds a handler thread, waiting for a request line
        with socket.create_connection(endpoint.server.server_address) as extra:
            assert _closed_by_server(extra, within_s=0.5)  # refused without a thread
    finally:
        for s in idle:
            s.close()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:  # their threads end at the timeout and free the slots
        try:
            assert urllib.request.urlopen(_url(endpoint, "/readyz"), timeout=2).read() == b"ready\n"
            break
        except OSError:
            time.sleep(0.1)
    else:
        pytest.fail("/readyz not answered after the idle clients left")
