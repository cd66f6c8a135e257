"""ACK building: codes, the echoed control id, and nothing of the peer's echoed unless made safe."""
from __future__ import annotations

import hl7

from daemon.hl7 import acks


def parse(ack: bytes):  # noqa: ANN201
    return hl7.parse(ack.decode("ascii"))


def test_aa_answers_the_message_it_acknowledges():
    h = acks.read_header(b"MSH|^~\\&|RIS|GENHOSP|CXRD|CXRD|20260101||ORU^R01|MSG00042|P|2.3.1\rPID|1")
    ack = parse(acks.build_ack(h, acks.AA, "recorded", acks.ACCEPTED, application="CXRD", facility="RAD"))
    msh, msa = ack.segment("MSH"), ack.segment("MSA")
    assert str(msh[3]) == "CXRD" and str(msh[4]) == "RAD"
    assert str(msh[5]) == "RIS" and str(msh[6]) == "GENHOSP"   # back to the sender
    assert str(msh[9]) == "ACK^R01^ACK" and str(msh[12]) == "2.3.1" and str(msh[11]) == "P"
    assert str(msa[1]) == "AA" and str(msa[2]) == "MSG00042"
    assert "ERR" not in [str(s[0]) for s in ack]


def test_ae_and_ar_carry_err_with_the_table_0357_code_and_our_reason():
    h = acks.read_header(b"MSH|^~\\&|RIS|H|CXRD|CXRD|20260101||ORM^O01|C9|P|2.5.1")
    ack = parse(acks.build_ack(h, acks.AR, "only ORU^R01 report messages are accepted", acks.UNSUPPORTED_TYPE,
                               application="CXRD", facility=""))
    assert str(ack.segment("MSA")[1]) == "AR"
    assert ack.unescape(str(ack.segment("MSA")[3])) == "only ORU^R01 report messages are accepted"
    err = ack.segment("ERR")
    assert str(err[3][0][0]) == "200" and str(err[4]) == "E"


def test_peer_values_cannot_inject_delimiters_segments_or_frame_bytes():
    evil = b"MSH|^~\\&|R^I~S\x0b|F\\ac&|CXRD|CXRD|20260101||ORU^R01|C1\x1c\r\nMSA|AA|forged|P|9.9"
    h = acks.read_header(evil)
    raw = acks.build_ack(h, acks.AE, "bad", acks.DATA_TYPE, application="CXRD", facility="")
    assert b"\x0b" not in raw and b"\x1c" not in raw and raw.count(b"MSA|") == 1
    msh = parse(raw).segment("MSH")
    assert str(msh[5]) == "R" and str(msh[6]) == "Fac" and str(msh[12]) == "2.5.1"  # unknown version replaced


def test_an_unreadable_header_still_gets_an_ack():
    raw = acks.build_ack(acks.read_header(b"\x00garbage"), acks.AE, "message does not start with an MSH segment",
                         acks.SEGMENT_SEQUENCE, application="CXRD", facility="")
    ack = parse(raw)
    assert str(ack.segment("MSA")[1]) == "AE" and str(ack.segment("MSA")[2]) == ""


def test_a_long_control_id_is_bounded():
    h = acks.read_header(b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01|" + b"9" * 5000 + b"|P|2.5.1")
    assert len(h.control_id) == 199
