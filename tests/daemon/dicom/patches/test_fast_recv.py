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

from daemon.dicom.patches import fast_recv

ACCEPTED = SimpleNamespace(is_acceptor=True)  # the side of an association cxrd's SCP accepted


def _accepted_socket(sock: socket.socket) -> SimpleNamespace:
    """The parts of an AssociationSocket that `recv` touches, on an association we accepted."""
    return SimpleNamespace(socket=sock, assoc=ACCEPTED)


@pytest.fixture(autouse=True)
def installed():
    fast_recv.install()
    yield
    fast_recv.uninstall()


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
    sock = _accepted_socket(ours)
    assert fast_recv.recv(sock, 300_000) == payload[:300_000]  # the next PDU's bytes stay unread
    t.join()
    assert fast_recv.recv(sock, 8) == b"NEXT-PDU"


def test_a_peer_that_closes_early_gives_what_arrived(pair):
    ours, peer = pair
    peer.sendall(b"half a PDU")
    peer.shutdown(socket.SHUT_WR)
    assert fast_recv.recv(_accepted_socket(ours), 1000) == bytearray(b"half a PDU")


def test_a_timeout_propagates_as_pynetdicom_expects(pair):
    ours, _peer = pair
    ours.settimeout(0.05)
    with pytest.raises(TimeoutError):
        fast_recv.recv(_accepted_socket(ours), 10)


def test_install_replaces_pynetdicoms_readers_and_uninstall_restores_them():
    from pynetdicom.dul import DULServiceProvider
    fast_recv.install()
    assert AssociationSocket.recv is fast_recv.recv
    assert DULServiceProvider._read_pdu_data is fast_recv.read_pdu_data
    fast_recv.uninstall()
    assert AssociationSocket.recv is fast_recv._original
    assert DULServiceProvider._read_pdu_data is fast_recv._original_read_pdu


# -- read_pdu_data: the DUL's PDU reader -------------------------------------------------------

import queue  # noqa: E402
import struct  # noqa: E402

from pynetdicom import evt  # noqa: E402
from pynetdicom.dul import _PDU_TYPES  # noqa: E402
from pynetdicom.pdu import P_DATA_TF  # noqa: E402


def _dul(sock: socket.socket, handlers: dict | None = None) -> SimpleNamespace:
    """The parts of a DULServiceProvider that its PDU reader touches."""
    handlers = handlers or {}
    assoc = SimpleNamespace(get_handlers=lambda event: handlers.get(event, []), is_acceptor=True,
                            acceptor=SimpleNamespace(maximum_length=1 << 24))
    dul = SimpleNamespace(socket=_accepted_socket(sock), event_queue=queue.Queue(), _recv_pdu=queue.Queue(),
                          assoc=assoc, state_machine=SimpleNamespace(current_state="Sta6"))  # accepted
    dul.socket.recv = lambda n: fast_recv.recv(dul.socket, n)
    dul.decoded_by_pynetdicom = []

    def decode_pdu(data):  # noqa: ANN001, ANN202 - DULServiceProvider._decode_pdu without its events
        dul.decoded_by_pynetdicom.append(bytes(data))
        pdu_cls, event = _PDU_TYPES[bytes(data[0:1])]
        pdu = pdu_cls()
        pdu.decode(bytes(data))
        return pdu, event
    dul._decode_pdu = decode_pdu
    return dul


def _p_data(*pdvs: tuple[int, bytes]) -> bytes:
    body = b"".join(struct.pack(">LB", len(v) + 1, cid) + v for cid, v in pdvs)
    return struct.pack(">BBL", 0x04, 0, len(body)) + body


def test_a_p_data_pdu_decodes_to_views_with_the_same_values_as_pynetdicoms_reader(pair):
    ours, peer = pair
    command, fragment = b"\x03" + os.urandom(90), b"\x00" + os.urandom(200_000)
    wire = _p_data((1, command), (3, fragment))
    peer.sendall(wire)
    dul = _dul(ours)
    fast_recv.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == "Evt10"
    assert dul.decoded_by_pynetdicom == []
    pdu = dul._recv_pdu.get_nowait()
    reference = P_DATA_TF()
    reference.decode(wire)
    got = [(i.presentation_context_id, bytes(i.presentation_data_value)) for i in pdu.presentation_data_value_items]
    assert got == [(1, command), (3, fragment)]
    assert got == [(i.presentation_context_id, i.presentation_data_value)
                   for i in reference.presentation_data_value_items]
    assert all(isinstance(i.presentation_data_value, memoryview) for i in pdu.presentation_data_value_items)
    primitive = pdu.to_primitive()  # what the DIMSE layer receives: control byte, then the value
    assert [(cid, data[0], bytes(data[1:])) for cid, data in primitive.presentation_data_value_list] == \
        [(1, 3, command[1:]), (3, 0, fragment[1:])]


def test_other_pdus_and_listened_to_associations_take_pynetdicoms_decoder(pair):
    ours, peer = pair
    release_rq = struct.pack(">BBL", 0x05, 0, 4) + b"\0\0\0\0"
    peer.sendall(release_rq)
    dul = _dul(ours)
    fast_recv.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == "Evt12"  # A-RELEASE-RQ
    assert dul.decoded_by_pynetdicom == [release_rq]
    for event in (evt.EVT_DATA_RECV, evt.EVT_PDU_RECV):
        wire = _p_data((1, b"\x03abc"))
        peer.sendall(wire)
        dul = _dul(ours, {event: [(lambda e: None, None)]})
        fast_recv.read_pdu_data(dul)
        assert dul.event_queue.get_nowait() == "Evt10"
        assert dul.decoded_by_pynetdicom == [wire]  # so its handlers see what they always saw


@pytest.mark.parametrize("wire, event", [
    (b"\x04\x00", "Evt17"),                                     # header cut short, then closed
    (struct.pack(">BBL", 0x04, 0, 1000) + b"x" * 10, "Evt17"),  # body cut short, then closed
    (struct.pack(">BBL", 0x09, 0, 4) + b"\0" * 4, "Evt19"),     # unknown PDU type
    (struct.pack(">BBL", 0x04, 0, 3) + b"\0\0\0", "Evt19"),     # undecodable P-DATA-TF
])
def test_short_unknown_and_undecodable_pdus_give_pynetdicoms_events(pair, wire, event):
    ours, peer = pair
    peer.sendall(wire)
    peer.shutdown(socket.SHUT_WR)
    dul = _dul(ours)
    fast_recv.read_pdu_data(dul)
    assert dul.event_queue.get_nowait() == event
    assert dul._recv_pdu.empty()


def test_an_association_we_requested_reads_with_pynetdicoms_own_code(pair, monkeypatch):
    """The results sender's associations do not depend on whether the adjustments are installed."""
    ours, peer = pair
    ours.settimeout(1.0)  # the adjusted reader would wait for bytes that never come: fail, not hang
    calls = []
    monkeypatch.setattr(fast_recv, "_original", lambda self, n: calls.append(("recv", n)) or bytearray(n))
    monkeypatch.setattr(fast_recv, "_original_read_pdu", lambda self: calls.append(("read_pdu",)))
    requested = SimpleNamespace(is_acceptor=False)
    assert fast_recv.recv(SimpleNamespace(socket=ours, assoc=requested), 4) == bytearray(4)
    dul = _dul(ours)
    dul.assoc.is_acceptor = False
    peer.sendall(_p_data((1, b"\x03abc")))
    fast_recv.read_pdu_data(dul)
    assert calls == [("recv", 4), ("read_pdu",)]
    assert dul.event_queue.empty() and dul._recv_pdu.empty()  # nothing read by the adjusted reader
