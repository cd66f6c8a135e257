"""The PDU size bound holds on every association our SCP accepts, with or without the receive
adjustments, and pynetdicom's reader that `pdu_limits.read_pdu_data` restates is the one pinned."""
from __future__ import annotations

import socket
import struct
import time

import pytest

from config.schema import Dicom
from conftest import free_port
from daemon.dicom import patches, pdu_limits, scp

# sha256 of `inspect.getsource(DULServiceProvider._read_pdu_data)` as pdu_limits restates it. When
# an upgrade changes it, re-read upstream, carry the change into `pdu_limits.read_pdu_data`, re-pin.
PINNED_UPSTREAM = "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"


def test_the_restated_upstream_reader_is_the_pinned_one():
    (name, function), = pdu_limits.REPLACES.items()
    assert patches.source_sha256(function) == PINNED_UPSTREAM, name


@pytest.fixture(params=["stock", "adjusted"])
def handle(request):  # noqa: ANN001, ANN201
    patches.uninstall()
    if request.param == "adjusted":
        assert patches.install()
    h = scp.start(Dicom(bind="127.0.0.1", port=free_port()), on_store=lambda *a: 0)
    yield h
    h.stop(drain_s=1)
    patches.uninstall()


@pytest.mark.parametrize("length", [pdu_limits.PREASSOCIATION_MAX_PDU + 1, 0xFFFFFFFF])
def test_a_longer_pdu_before_association_is_aborted_unread(handle, length):  # noqa: ANN001
    with socket.create_connection(("127.0.0.1", handle.port), timeout=5) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0, length))
        got = b""
        while chunk := s.recv(100):
            got += chunk
    assert got == bytes.fromhex("07000000000400000206")  # A-ABORT, provider, invalid parameter
    deadline = time.monotonic() + 2
    while handle.active_associations() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert handle.active_associations() == 0  # and the slot is free at once


def test_a_pdu_at_the_bound_is_read():  # noqa: D103
    assert pdu_limits.PREASSOCIATION_MAX_PDU == 64 * 1024
    assert Dicom().max_pdu == 1048576  # non-zero by default: the bound after acceptance
