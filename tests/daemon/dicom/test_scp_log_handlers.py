"""pynetdicom's standard logging handlers format every PDU and DIMSE message for log lines cxrd
discards, at a cost per image; an association accepted by cxrd must not carry them."""
from __future__ import annotations

import time

from pynetdicom import AE, evt
from pynetdicom._handlers import (standard_dimse_recv_handler, standard_dimse_sent_handler,
                                  standard_pdu_recv_handler, standard_pdu_sent_handler)

STANDARD = {standard_dimse_recv_handler, standard_dimse_sent_handler, standard_pdu_recv_handler,
            standard_pdu_sent_handler}
EVENTS = (evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT, evt.EVT_PDU_RECV, evt.EVT_PDU_SENT)


def bound(assoc) -> set:  # noqa: ANN001
    return {h for event in EVENTS for h, _args in assoc.get_handlers(event)}


def test_accepted_associations_carry_no_standard_log_handlers_and_still_answer(scp_handle):
    ae = AE("PROBE")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", scp_handle.port, ae_title="CXRD")
    try:
        assert assoc.is_established
        deadline = time.monotonic() + 5
        while not scp_handle.server.active_associations and time.monotonic() < deadline:
            time.sleep(0.01)
        (server_side,) = scp_handle.server.active_associations
        assert not bound(server_side) & STANDARD
        assert assoc.send_c_echo().Status == 0x0000
    finally:
        assoc.release()
