"""cxrd receives and sends the same with and without its adjustments to pynetdicom: our SCP and the
results sender's outgoing association, in one process, with real pynetdicom on both ends. With the
adjustments installed, only the association our SCP accepted takes the adjusted paths."""
from __future__ import annotations

import pydicom
import pytest
from pynetdicom.association import Association

from config.schema import Dicom
from conftest import free_port
from daemon.dicom import patches, scp, statuses
from daemon.dicom.patches import fast_recv
from daemon.stages.results import Destination, SendError, send

IMAGE = "dicom/derived/nih_00000001_000_explicit-vr-le.dcm"


@pytest.fixture(params=["stock", "adjusted"])
def adjusted(request) -> bool:  # noqa: ANN001
    patches.uninstall()
    if request.param == "adjusted":
        assert patches.install()
    yield request.param == "adjusted"
    patches.uninstall()


@pytest.fixture
def stock_reader_calls(monkeypatch) -> list[str]:  # noqa: ANN001
    """The mode (acceptor/requestor) of each association whose PDU the adjusted reader handed back
    to pynetdicom's own reader."""
    calls: list[str] = []
    original = fast_recv._original_read_pdu

    def spy(dul) -> None:  # noqa: ANN001
        calls.append(dul.assoc.mode)
        original(dul)
    monkeypatch.setattr(fast_recv, "_original_read_pdu", spy)
    return calls


def _serve(answer: int) -> tuple[scp.ScpHandle, list[tuple[str, str]]]:
    received: list[tuple[str, str]] = []

    def on_store(ds, meta, calling_aet, host) -> int:  # noqa: ANN001
        received.append((str(ds.SOPInstanceUID), calling_aet))
        return answer
    return scp.start(Dicom(bind="127.0.0.1", port=free_port()), on_store=on_store), received


def test_an_image_sent_by_the_results_sender_arrives_at_our_scp(adjusted, stock_reader_calls, shared_data):
    handle, received = _serve(statuses.SUCCESS)
    ds = pydicom.dcmread(shared_data / IMAGE)
    try:
        send([ds], Destination(calling_aet="RESULTS", called_aet="CXRD", host="127.0.0.1", port=handle.port))
    finally:
        handle.stop(drain_s=1)
    assert received == [(str(ds.SOPInstanceUID), "RESULTS")]
    assert patches.installed() is adjusted
    # Installed: every PDU of our outgoing association went to pynetdicom's reader, none of the
    # accepted one's. Not installed: the adjusted reader is not in the path at all.
    assert set(stock_reader_calls) == ({"requestor"} if adjusted else set())
    assert not adjusted or len(stock_reader_calls) >= 3  # A-ASSOCIATE-AC, C-STORE-RSP, A-RELEASE-RP


def test_a_refusal_reaches_the_sender_as_the_same_status(adjusted, shared_data):
    handle, received = _serve(statuses.OUT_OF_RESOURCES)
    try:
        with pytest.raises(SendError, match="0xA700"):
            send([pydicom.dcmread(shared_data / IMAGE)],
                 Destination(calling_aet="RESULTS", called_aet="CXRD", host="127.0.0.1", port=handle.port))
    finally:
        handle.stop(drain_s=1)
    assert len(received) == 1


def test_association_modes_are_what_the_adjustments_test():
    from pynetdicom import AE
    assert Association(AE(), "acceptor").is_acceptor and not Association(AE(), "requestor").is_acceptor
