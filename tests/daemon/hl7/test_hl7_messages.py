"""What is read from which field of an ORU^R01, and what is answered AE or AR instead."""
from __future__ import annotations

import pytest

from daemon.hl7 import acks, messages

BASE = ("MSH|^~\\&|RIS|GENHOSP|CXRD|CXRD|20260101||ORU^R01|C1|P|2.5.1{msh18}\r"
        "PID|1||MRN1||DOE^JANE\r"
        "ORC|RE|PLACER|ORCACC\r"
        "OBR|1|PL|FILLERACC|71020^XR CHEST^C4||||||||||||||OBR18ACC|||||||{status}\r"
        "{extra}"
        "OBX|1|TX|18782-3^Findings^LN||Heart is enlarged.~No effusion.||||||F\r"
        "OBX|2|FT|19005-8^Impression^LN||Cardiomegaly \\.br\\ no pneumothorax \\T\\ no edema||||||F\r")


def msg(*, msh18: str = "", status: str = "F", extra: str = "", replace: tuple[str, str] = ("", "")) -> bytes:
    text = BASE.format(msh18=msh18, status=status, extra=extra)
    if replace[0]:
        text = text.replace(*replace)
    return text.encode("latin-1")


def test_fields_read_from_an_oru():
    p = messages.parse(msg(extra="ZDS|1.2.3.4^RIS^Application^DICOM\r"))
    assert (p.message_type, p.control_id, p.result_status, p.sender) == ("ORU^R01", "C1", "F", "RIS^GENHOSP")
    assert p.study_uid == "1.2.3.4"
    assert p.accession == "OBR18ACC"  # OBR-18 before OBR-3 and ORC-3
    assert p.text == ("FINDINGS: Heart is enlarged.\nNo effusion.\n"
                      "IMPRESSION: Cardiomegaly \n no pneumothorax & no edema")
    assert "DOE" not in repr(p) and "Heart" not in repr(p)


def test_study_uid_from_ipc_or_an_obx_and_accession_fallbacks():
    p = messages.parse(msg(extra="IPC|IPCACC|SPS|1.2.9.9\r"))
    assert (p.study_uid, p.accession) == ("1.2.9.9", "IPCACC")
    p = messages.parse(msg(extra="OBX|9|UI|113014^Study Instance UID^DCM||1.2.7.7||||||F\r",
                           replace=("OBR18ACC", "")))
    assert (p.study_uid, p.accession) == ("1.2.7.7", "FILLERACC")
    assert "1.2.7.7" not in p.text


def test_declared_character_sets_decode_strictly():
    raw = msg(msh18="||||||UNICODE UTF-8").replace(b"enlarged", "enlarg\u00e9d".encode("utf-8"))
    assert "enlarg\u00e9d" in messages.parse(raw).text
    bad = msg(msh18="||||||ASCII").replace(b"enlarged", b"enlarg\xe9d")
    with pytest.raises(messages.Refusal) as exc:
        messages.parse(bad)
    assert exc.value.code == acks.AE
    with pytest.raises(messages.Refusal) as exc:
        messages.parse(msg(msh18="||||||KLINGON"))
    assert exc.value.code == acks.AR
    assert "enlarg\u00e9d" in messages.parse(msg().replace(b"enlarged", b"enlarg\xe9d")).text  # latin-1 default


@pytest.mark.parametrize("raw, code", [
    (b"garbage", acks.AE),
    (b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01||P|2.5.1\rOBR|1", acks.AE),       # no MSH-10
    (b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ADT^A01|C1|P|2.5.1\rPID|1", acks.AR),    # not a report
    (b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01|C1|P|2.5.1\rPID|1", acks.AE),    # no OBR
    (b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01|C1|D|2.5.1\rOBR|1", acks.AR),    # debug processing id
    (b"MSH|^~\\&|RIS|H|CXRD|CXRD|2026||ORU^R01|C1|P|2.5.1\rOBR|1\x00\rOBX|1|TX|x||t", acks.AE),  # NUL
])
def test_malformed_and_refused(raw, code):
    with pytest.raises(messages.Refusal) as exc:
        messages.parse(raw)
    assert exc.value.code == code


def test_no_text_and_bad_uid_are_errors():
    no_text = msg(replace=("OBX|1|TX", "OBX|1|NM")).replace(b"OBX|2|FT", b"OBX|2|NM")
    with pytest.raises(messages.Refusal, match="no report text"):
        messages.parse(no_text)
    with pytest.raises(messages.Refusal, match="not a valid UID"):
        messages.parse(msg(extra="ZDS|1.2.abc^RIS^Application^DICOM\r"))


def test_escapes_are_undone_without_logging_the_text_or_growing_without_bound(caplog):
    """python-hl7's own unescape logs the whole field (the report) with a traceback on a bad escape,
    raises on `\\.spX\\` and repeats `\\.sp` as often as the peer asks; ours does none of that."""
    caplog.set_level("DEBUG")
    text = messages.parse(msg(replace=("Heart is enlarged.", "Heart\\.sp99999999\\big \\H\\bold\\N\\ \\X41\\ "
                                       "\\Zlocal\\ \\C2842\\ \\.spX\\ \\.in+4\\x \\F\\\\S\\\\R\\\\E\\"))).text
    assert text.startswith("FINDINGS: Heart" + "\n" * messages.MAX_FORMAT_REPEAT + "big bold A   \n     x |^~\\")
    assert caplog.records == []
    for bad in ("\\Xzz\\", "\\X0\\", "\\X00\\", "\\X1B\\"):  # not hex, odd length, NUL, ESC
        with pytest.raises(messages.Refusal) as exc:
            messages.parse(msg(replace=("Heart is enlarged.", f"Heart {bad}")))
        assert exc.value.code == acks.AE
    assert messages.unescape("a \\ b", "\\", "\r|~^&") == "a \\ b"  # an unclosed escape is text


@pytest.mark.parametrize("extra", [
    "NTE|1||x\r" * 2001,                                # many segments
    "NTE|1||" + "^" * 1_000_000 + "\r",                     # a frame's worth of components
    "NTE|1||" + "a~" * 40_000 + "\r",     # repetitions
])
def test_structure_beyond_the_parser_bounds_is_refused_before_parsing(extra):
    """python-hl7 spends ~430 bytes and microseconds per delimiter: a 1 MiB frame of "^" was ~450 MiB
    and seconds of CPU. Refused (AR) from counting alone."""
    import time
    started = time.monotonic()
    with pytest.raises(messages.Refusal) as exc:
        messages.parse(msg(extra=extra))
    assert exc.value.code == acks.AR and time.monotonic() - started < 0.5


def test_a_long_report_one_obx_per_line_is_within_the_bounds():
    lines = "".join(f"OBX|{i}|TX|18782-3^Findings^LN||Line {i} of the report, no effusion.||||||F\r"
                    for i in range(3, 1000))
    assert messages.parse(msg(extra=lines)).text.count("\n") >= 997


@pytest.mark.parametrize("extra, replace", [
    ("ZDS|1.2&3.4^RIS^Application^DICOM\r", ("", "")),      # subcomponents in the UID: not "1.2"
    ("", ("OBR18ACC", "ACC&9^X")),                         # subcomponents in the accession: not "ACC"
    ("", ("OBR18ACC", "ACC\\T\\9")),                       # an escape in the accession
    ("ZDS|" + "1." * 40 + "1^RIS^Application^DICOM\r", ("", "")),  # a UID over 64 characters
    ("", ("OBR18ACC", "A" * 65)),
])
def test_identifiers_with_delimiters_or_too_long_are_errors(extra, replace):
    with pytest.raises(messages.Refusal) as exc:
        messages.parse(msg(extra=extra, replace=replace))
    assert exc.value.code == acks.AE


def test_a_message_type_with_subcomponents_is_not_an_oru():
    with pytest.raises(messages.Refusal) as exc:
        messages.parse(msg(replace=("ORU^R01", "ORU&X^R01")))
    assert exc.value.code == acks.AR


def test_msh18_is_read_from_the_first_segment_when_segments_end_in_lf():
    """With LF segment ends the MSH line used to run on into PID and OBR: MSH-18 was read from a
    later segment's field (here OBR-7's position), so a valid message was refused AR."""
    raw = msg(msh18="||||||UNICODE UTF-8").replace(b"\r", b"\n").replace(b"enlarged", "enlarg\u00e9d".encode())
    assert "enlarg\u00e9d" in messages.parse(raw).text
    assert messages.parse(msg().replace(b"\r", b"\n")).control_id == "C1"
