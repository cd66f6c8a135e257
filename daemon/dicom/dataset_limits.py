"""How many bytes the data set of one received DIMSE message may hold, and inflating a deflated one.

The PDU bound (`daemon.dicom.pdu_limits`) caps each P-DATA-TF, but a data set arrives in as many
fragments as the peer likes, and pynetdicom appends every fragment to the message's buffer
(`DIMSEMessage.decode_msg`, a BytesIO) until one is marked last. A peer that never marks one last
would make us hold everything it sends. So every association our SCP accepts gets, in
`opened`, a `receive_primitive` that counts what the DIMSE layer already holds for it (the message
being assembled, and complete messages not yet taken by the association thread) and, before a
fragment that would take it past `max_bytes` is appended, aborts the association (A-ABORT, the
way pynetdicom itself aborts for an invalid DIMSE message, then the connection is closed without
reading what else the peer sends: `pdu_limits.cut_off`) and drops what was buffered. The command
set is bounded the same way, by `MAX_COMMAND_BYTES`. This sits above the PDU readers, so it holds
whether or not the receive adjustments are installed.

What a message holds when it is complete is at most `max_bytes`; while the handler decodes and
stores it, the next message of the same association can hold at most the same again. So the
memory held for received data sets is bounded by about max_associations x max_bytes (twice that
while images are being processed), whatever the peers send.

A data set in Deflated Explicit VR Little Endian is inflated here (`received_dataset`), never by
pynetdicom's decoder, which inflates the whole stream at once: a few megabytes of deflate can
announce gigabytes. Here the stream is inflated incrementally and refused (`DatasetTooLarge`) as
soon as the output passes `max_bytes`, so no more than that is ever produced.

Every received data set is then read through once (`check_readable`): an element pydicom cannot
decode, sequences nested deeper than `MAX_SEQUENCE_DEPTH`, or several values where ingest reads
one, and the data set is refused as unparseable (statuses.UNPARSEABLE) before any stage looks at it.
"""
from __future__ import annotations

import logging
import zlib
from io import BytesIO
from types import MethodType

from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.filereader import read_dataset
from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_messages import DIMSEMessage

from daemon.dicom import pdu_limits
from daemon.ops.logs import event

log = logging.getLogger("cxrd.scp")

# A command set is a dozen short elements (PS3.7 9.3, 10.3); the longest carries a few UIDs and
# AE titles. 64 KiB is far beyond any real one.
MAX_COMMAND_BYTES = 64 * 1024
# Real images nest a few levels (a code sequence in a view code sequence...); thousands of levels is
# an attack on every recursive reader, ours and pydicom's.
MAX_SEQUENCE_DEPTH = 32
# Attributes the pipeline reads as one value (VM 1 in the standard): Modality, the image's UIDs, and
# the Image Pixel module (PS3.3 C.7.6.3), whose numbers size every decoder's output.
_SINGLE_VALUED = frozenset({0x00080016, 0x00080018, 0x00080060, 0x0020000D, 0x0020000E, 0x00180015,
                            0x00280002, 0x00280004, 0x00280006, 0x00280008, 0x00280010, 0x00280011,
                            0x00280100, 0x00280101, 0x00280102, 0x00280103})
_PDV_HEADERS = 64 * 1024  # room for the item headers of the PDVs of one PDU

# The upstream functions whose behaviour `receive_primitive` relies on (it wraps the first; the
# second is where fragments are appended). Their source is pinned in
# tests/daemon/dicom/test_dataset_limits.py, so an upgrade that changes them is re-read.
WRAPS = {"pynetdicom.dimse.DIMSEServiceProvider.receive_primitive": DIMSEServiceProvider.receive_primitive,
         "pynetdicom.dimse_messages.DIMSEMessage.decode_msg": DIMSEMessage.decode_msg}

_upstream_receive = DIMSEServiceProvider.receive_primitive


class InvalidMessageNoise(logging.Filter):
    """For pynetdicom's "pynetdicom.dimse" logger: drops the exception record (with its traceback)
    that follows pynetdicom's one-line "Received an invalid DIMSE message". Any peer can send a
    command set pynetdicom cannot turn into a request; the association is aborted and that line says
    so, a trace of pynetdicom's internals says nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.exc_info is None


class DatasetTooLarge(Exception):
    """A data set that is, or inflates to, more than the configured bound."""


def opened(ev: evt.Event, max_bytes: int) -> None:
    """EVT_CONN_OPEN handler: bound this association's DIMSE buffers (before any PDU is read)."""
    dimse = ev.assoc.dimse
    dimse.cxrd_max_dataset_bytes = max_bytes  # type: ignore[attr-defined]
    # With dicom.max_pdu = 0, no PDU may be larger than one message may hold (pdu_limits.largest_pdu).
    ev.assoc.dul.cxrd_max_message_bytes = max_bytes + MAX_COMMAND_BYTES + _PDV_HEADERS  # type: ignore[attr-defined]
    dimse.receive_primitive = MethodType(receive_primitive, dimse)  # type: ignore[method-assign]


def held_bytes(dimse: DIMSEServiceProvider) -> tuple[int, int]:
    """(command bytes, data set bytes) the DIMSE layer holds for this association now."""
    command = data = 0
    message = dimse.message
    if message is not None:
        command = message.encoded_command_set.tell()
        spool = getattr(message, "_data_set_file", None)
        data = spool.tell() if spool else message.data_set.tell()
    for _, primitive in list(dimse.msg_queue.queue):  # complete, not yet taken by the association
        stream = getattr(primitive, "DataSet", None)
        if isinstance(stream, BytesIO):
            data += stream.getbuffer().nbytes
    return command, data


def receive_primitive(self: DIMSEServiceProvider, primitive) -> None:  # noqa: ANN001 - P_DATA
    """pynetdicom's `receive_primitive`, after checking that the fragments fit the bounds."""
    command, data = held_bytes(self)
    for _, fragment in primitive.presentation_data_value_list:
        if len(fragment) and fragment[0] & 1:
            command += len(fragment) - 1
        else:
            data += len(fragment) - 1
    limit = self.cxrd_max_dataset_bytes  # type: ignore[attr-defined]
    if command > MAX_COMMAND_BYTES or data > limit:
        _refuse(self, "command set" if command > MAX_COMMAND_BYTES else "data set",
                MAX_COMMAND_BYTES if command > MAX_COMMAND_BYTES else limit)
        return
    try:
        _upstream_receive(self, primitive)
    except Exception as exc:  # noqa: BLE001 - a command set pynetdicom cannot read (no CommandField...)
        # Upstream raises out of the state machine here, killing the DUL thread with a traceback and
        # no A-ABORT; a garbage command set is the peer's fault, answered like any invalid message.
        assoc = self.assoc
        event(log, "dimse.invalid", logging.WARNING, host=assoc.requestor.address,
              calling_aet=assoc.requestor.ae_title, error=type(exc).__name__)
        self.message = None
        pdu_limits.cut_off(self.dul)


def _refuse(dimse: DIMSEServiceProvider, what: str, limit: int) -> None:
    """Drop what this message buffered and abort the association without reading further."""
    assoc = dimse.assoc
    event(log, "dataset.refused", logging.WARNING, host=assoc.requestor.address,
          calling_aet=assoc.requestor.ae_title, what=what, limit=limit)
    dimse.message = None
    pdu_limits.cut_off(dimse.dul)


def received_dataset(ev: evt.Event, max_bytes: int) -> Dataset:
    """The C-STORE's data set as pynetdicom's `ev.dataset` decodes it, except that a deflated one
    is inflated here within `max_bytes` (DatasetTooLarge past it; ValueError for a broken stream)."""
    syntax = ev.context.transfer_syntax
    if not syntax.is_deflated:
        ds = ev.dataset
    else:
        stream = ev.request.DataSet
        with stream.getbuffer() as deflated:
            inflated = inflate(deflated, max_bytes)
        ds = read_dataset(BytesIO(inflated), is_implicit_VR=False, is_little_endian=True)
        ds.set_original_encoding(False, True)
    check_readable(ds)
    return ds


def check_readable(ds: Dataset, depth: int = 0) -> None:
    """Raise ValueError unless every element of `ds` (sequences included, at most
    `MAX_SEQUENCE_DEPTH` deep) can be read, and the attributes ingest reads as one value have one.

    pydicom decodes an element on first access, so a malformed one (a length that is not a multiple
    of its VR's size, a VR it cannot read) would otherwise raise wherever the pipeline first
    touches it: in the chest rule, in de-identification, in the writer, each an "unexpected error".
    Here it is one refusal, before anything else looks at the data set. Elements are decoded into
    throwaway copies: the data set keeps its raw elements, which the writer copies as received."""
    for tag in ds.keys():
        elem = ds.get_item(tag)
        if isinstance(elem, RawDataElement):
            try:
                elem = convert_raw_data_element(elem, ds=ds)
            except Exception as exc:  # noqa: BLE001 - pydicom raises many types for bad bytes
                raise ValueError(f"element {tag} cannot be read ({type(exc).__name__})") from None
        if elem.VR == "SQ":
            if depth >= MAX_SEQUENCE_DEPTH:
                raise ValueError(f"sequences nested deeper than {MAX_SEQUENCE_DEPTH} levels")
            for item in elem.value or ():
                check_readable(item, depth + 1)
        elif depth == 0 and tag in _SINGLE_VALUED and isinstance(elem.value, (list, MultiValue)):
            raise ValueError(f"element {tag} has more than one value")


def inflate(deflated: bytes | memoryview, max_bytes: int) -> bytes:
    """A raw deflate stream (PS3.5 A.5) inflated, producing at most `max_bytes` + 1 bytes before
    refusing it (DatasetTooLarge). ValueError for a stream that is corrupt or ends early."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = bytearray()
    pending: bytes | memoryview = deflated
    try:
        while not inflater.eof:
            room = max_bytes + 1 - len(out)
            chunk = inflater.decompress(pending, min(room, 16 * 1024 * 1024))
            out += chunk
            if len(out) > max_bytes:
                raise DatasetTooLarge(f"the deflated data set inflates to more than {max_bytes} bytes")
            pending = inflater.unconsumed_tail
            if not chunk and not pending:
                raise ValueError("the deflated data set ends before its deflate stream does")
    except zlib.error:
        raise ValueError("the deflated data set is not a valid deflate stream") from None
    return bytes(out)
