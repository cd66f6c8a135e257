"""The C-STORE response, encoded directly instead of through pynetdicom's generic DIMSE encoder.

Every acknowledged image is answered with the same six-element command set. pynetdicom builds it
as a pydicom Dataset from the response primitive, encodes it once to learn its group length and
again to send it, in the thread the sender is waiting on (it sends the next image only when the
response arrives). Here the command set is packed with `struct` and
queued as the same single P-DATA primitive on the same DUL queue, so ordering and the state
machine are untouched. Anything else - another message type, a response carrying an Error Comment
or Offending Element, an association with EVT_DIMSE_SENT handlers, a peer whose maximum PDU is too
small for one fragment, an association we requested rather than accepted - goes through
pynetdicom's `send_msg` unchanged. A test checks the bytes equal pynetdicom's own encoding.
"""
from __future__ import annotations

import struct

from pynetdicom import evt
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.pdu_primitives import P_DATA

_original = DIMSEServiceProvider.send_msg
_C_STORE_RSP = 0x8001
_NO_DATA_SET = 0x0101

# The upstream function this module replaces, by qualified name (its source is pinned).
REPLACES = {"pynetdicom.dimse.DIMSEServiceProvider.send_msg": _original}


def install() -> None:
    """Put `send_msg` below in place (idempotent); it acts on accepted associations only."""
    DIMSEServiceProvider.send_msg = send_msg  # type: ignore[method-assign]


def uninstall() -> None:
    DIMSEServiceProvider.send_msg = _original  # type: ignore[method-assign]


def installed() -> bool:
    return DIMSEServiceProvider.send_msg is send_msg


def send_msg(self: DIMSEServiceProvider, primitive, context_id: int) -> None:  # noqa: ANN001
    encoded = (encode_store_response(primitive) if type(primitive) is C_STORE and self.assoc.is_acceptor
               else None)
    if (encoded is None or self.assoc.get_handlers(evt.EVT_DIMSE_SENT)
            or (self.maximum_pdu_size and len(encoded) + 6 > self.maximum_pdu_size)):
        _original(self, primitive, context_id)
        return
    pdata = P_DATA()
    pdata.presentation_data_value_list.append((context_id, b"\x03" + encoded))  # command, last fragment
    self.dul.send_pdu(pdata)


def encode_store_response(rsp: C_STORE) -> bytes | None:
    """The Implicit VR Little Endian command set of a plain C-STORE-RSP, or None if it is not one."""
    if (rsp.MessageIDBeingRespondedTo is None or rsp.Status is None
            or rsp.ErrorComment is not None or rsp.OffendingElement is not None):
        return None
    body = b""
    if rsp.AffectedSOPClassUID:
        body += _ui(0x0002, rsp.AffectedSOPClassUID)
    body += _us(0x0100, _C_STORE_RSP) + _us(0x0120, rsp.MessageIDBeingRespondedTo)
    body += _us(0x0800, _NO_DATA_SET) + _us(0x0900, rsp.Status)
    if rsp.AffectedSOPInstanceUID:
        body += _ui(0x1000, rsp.AffectedSOPInstanceUID)
    return struct.pack("<HHLL", 0, 0, 4, len(body)) + body


def _us(element: int, value: int) -> bytes:
    return struct.pack("<HHLH", 0, element, 2, value)


def _ui(element: int, uid: str) -> bytes:
    value = uid.encode("ascii")
    if len(value) % 2:
        value += b"\0"
    return struct.pack("<HHL", 0, element, len(value)) + value
