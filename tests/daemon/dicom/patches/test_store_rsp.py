"""store_rsp: a C-STORE response packed directly is byte-for-byte pynetdicom's encoding, and
anything it does not cover goes through pynetdicom's own send_msg."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import C_STORE_RSP
from pynetdicom.dimse_primitives import C_STORE, C_ECHO

from daemon.dicom.patches import store_rsp


def _rsp(status: int = 0x0000, sop: str | None = "1.2.826.0.1.3680043.8.498.1", msg_id: int = 7,
         sop_class: str | None = "1.2.840.10008.5.1.4.1.1.1.1") -> C_STORE:
    rsp = C_STORE()
    rsp.MessageIDBeingRespondedTo = msg_id
    rsp.AffectedSOPClassUID = sop_class
    rsp.AffectedSOPInstanceUID = sop
    rsp.Status = status
    return rsp


def _pynetdicom_pdvs(rsp: C_STORE, max_pdu: int = 131072) -> list[tuple[int, bytes]]:
    msg = C_STORE_RSP()
    msg.primitive_to_message(rsp)
    return [pair for pdata in msg.encode_msg(5, max_pdu) for pair in pdata.presentation_data_value_list]


@pytest.mark.parametrize("rsp", [
    _rsp(),
    _rsp(sop="1.2.826.0.1.3680043.8.498.12"),  # even length: no padding
    _rsp(status=0xA700, msg_id=65535),
    _rsp(status=0xC211, sop=None),
    _rsp(sop_class=None),
    _rsp(status=0xB000),
], ids=["odd-uid", "even-uid", "out-of-resources", "no-instance", "no-class", "warning"])
def test_packed_response_equals_pynetdicoms_encoding(rsp):
    assert [(5, b"\x03" + store_rsp.encode_store_response(rsp))] == _pynetdicom_pdvs(rsp)


def test_responses_with_error_details_are_left_to_pynetdicom():
    rsp = _rsp(status=0xC211)
    rsp.ErrorComment = "details"
    assert store_rsp.encode_store_response(rsp) is None
    rsp = _rsp(status=0xC211)
    rsp.OffendingElement = [0x00100010]
    assert store_rsp.encode_store_response(rsp) is None
    request = C_STORE()  # a request, not a response
    request.MessageID = 1
    assert store_rsp.encode_store_response(request) is None


def _provider(handlers: dict | None = None, max_pdu: int = 131072, accepted: bool = True) -> SimpleNamespace:
    sent, fallbacks = [], []
    dimse = SimpleNamespace(
        assoc=SimpleNamespace(get_handlers=lambda event: (handlers or {}).get(event, []), is_acceptor=accepted),
        maximum_pdu_size=max_pdu, dul=SimpleNamespace(send_pdu=sent.append), sent=sent, fallbacks=fallbacks)
    return dimse


@pytest.fixture
def recorded_fallback(monkeypatch):
    calls = []
    monkeypatch.setattr(store_rsp, "_original", lambda self, primitive, cid: calls.append(primitive))
    return calls


def test_send_msg_queues_one_p_data_and_falls_back_where_it_must(recorded_fallback):
    dimse = _provider()
    rsp = _rsp()
    store_rsp.send_msg(dimse, rsp, 5)
    assert [p.presentation_data_value_list for p in dimse.sent] == [_pynetdicom_pdvs(rsp)]
    assert recorded_fallback == []

    echo = C_ECHO()
    echo.MessageIDBeingRespondedTo, echo.Status = 1, 0
    listened = _provider({evt.EVT_DIMSE_SENT: [(lambda e: None, None)]})
    tiny = _provider(max_pdu=64)
    requested = _provider(accepted=False)  # an association we requested: pynetdicom's own code
    detailed = _rsp(status=0xC211)
    detailed.ErrorComment = "x"
    for provider, primitive in ((dimse, echo), (listened, rsp), (tiny, rsp), (dimse, detailed), (requested, rsp)):
        store_rsp.send_msg(provider, primitive, 5)
    assert recorded_fallback == [echo, rsp, rsp, detailed, rsp]
    assert len(dimse.sent) == 1 and listened.sent == [] and tiny.sent == [] and requested.sent == []


def test_install_and_uninstall():
    store_rsp.install()
    assert DIMSEServiceProvider.send_msg is store_rsp.send_msg
    store_rsp.uninstall()
    assert DIMSEServiceProvider.send_msg is store_rsp._original
