"""`fast_recv.recv` keeps pynetdicom's contract: exactly nr_bytes in order however the peer splits
them, what arrived when the peer closes early, and socket errors (timeouts) passed on."""
from __future__ import annotations

import os
import socket
import threading
import time
from types import SimpleNamespace

import pytest
from pynetdicom.transport import AssociationSocket

from daemon import fast_recv


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_reads_exactly_the_pdu_however_the_peer_splits_it(pair):
    ours, peer = pair
    payload = os.urandom(300_000) + b"NEXT-PDU"

    def send_in_pieces():
        for start in range(0, 300_000, 70_001):
            peer.sendall(payload[start:min(start + 70_001, 300_000)])
            time.sleep(0.01)
        peer.sendall(payload[300_000:])
    t = threading.Thread(target=send_in_pieces)
    t.start()
    sock = SimpleNamespace(socket=ours)
    assert fast_recv.recv(sock, 300_000) == payload[:300_000]  # the next PDU's bytes stay unread
    t.join()
    assert fast_recv.recv(sock, 8) == b"NEXT-PDU"


def test_a_peer_that_closes_early_gives_what_arrived(pair):
    ours, peer = pair
    peer.sendall(b"half a PDU")
    peer.shutdown(socket.SHUT_WR)
    assert fast_recv.recv(SimpleNamespace(socket=ours), 1000) == bytearray(b"half a PDU")


def test_a_timeout_propagates_as_pynetdicom_expects(pair):
    ours, _peer = pair
    ours.settimeout(0.05)
    with pytest.raises(TimeoutError):
        fast_recv.recv(SimpleNamespace(socket=ours), 10)


def test_install_replaces_pynetdicoms_recv_and_uninstall_restores_it():
    fast_recv.install()
    assert AssociationSocket.recv is fast_recv.recv
    fast_recv.uninstall()
    assert AssociationSocket.recv is fast_recv._original
    fast_recv.install()
